"""The gRPC front door: Triton's `inference.GRPCInferenceService`, forwarded byte for byte.

Handlers are registered generically with no (de)serializers, so a request's
bytes — raw_input_contents included — reach the backend exactly as the client
sent them and the backend's answer bytes reach the client unchanged. The router
parses a copy of a ModelInfer request only to read its routing features.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, NoReturn

import grpc
from tritonclient.grpc import service_pb2

from helmrec.router.config import RouterConfig
from helmrec.router.dispatch import BackendFailure, Dispatcher, RouteFailure
from helmrec.router.grpc_stream import StreamAborted, StreamSession, failed_before_answer, parse

SERVICE = "inference.GRPCInferenceService"
# Forwarded to one healthy backend: every backend serves the same repository.
METADATA_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
)
# These change or read per-process state (shared-memory regions, loaded models,
# log and trace settings); sent to one backend of N they would silently diverge.
UNSUPPORTED_METHODS = (
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "LogSettings",
    "TraceSetting",
)
MESSAGE_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)
# gRPC's default reconnect backoff grows to 120 s: a backend back after a long
# outage would stay unreachable that long. Capped at 2 s, a revived backend is
# seen within a few health probes.
CHANNEL_OPTIONS = (
    *MESSAGE_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
# Transport headers the router's own channel sets; the client's copies are not forwarded.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "accept-encoding"})


@dataclass(frozen=True)
class BackendError:
    """A backend's own error answer, relayed to the client with its code and text."""

    code: grpc.StatusCode
    details: str


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (m.key, m.value)
        for m in context.invocation_metadata() or ()
        if not m.key.startswith((":", "grpc-")) and m.key not in _HOP_HEADERS
    )


class GrpcFront:
    """Forwards every GRPCInferenceService call of the clients to the backends."""

    def __init__(self, config: RouterConfig, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self._channels = [grpc.aio.insecure_channel(b.grpc_target, options=CHANNEL_OPTIONS) for b in config.backends]
        self._unary = [
            {m: ch.unary_unary(f"/{SERVICE}/{m}") for m in ("ModelInfer", *METADATA_METHODS)} for ch in self._channels
        ]
        self._stream = [ch.stream_stream(f"/{SERVICE}/ModelStreamInfer") for ch in self._channels]

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, grpc.RpcMethodHandler] = {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        }
        for name in METADATA_METHODS:
            methods[name] = grpc.unary_unary_rpc_method_handler(self._metadata_handler(name))
        for name in UNSUPPORTED_METHODS:
            methods[name] = grpc.unary_unary_rpc_method_handler(self._unsupported_handler(name))
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels))

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.config.request_timeout_s if remaining is None else max(0.001, remaining)

    async def _unary_call(
        self, index: int, method: str, raw: bytes, context: grpc.aio.ServicerContext
    ) -> bytes | BackendError:
        try:
            return await self._unary[index][method](raw, timeout=self._timeout(context), metadata=_metadata(context))
        except grpc.aio.AioRpcError as err:
            if failed_before_answer(err):
                raise BackendFailure(f"{err.code().name}: {err.details()}") from None
            return BackendError(err.code(), err.details() or "")

    @staticmethod
    async def _answer(answer: bytes | BackendError, context: grpc.aio.ServicerContext) -> bytes:
        if isinstance(answer, BackendError):
            await context.abort(answer.code, answer.details)
        return answer  # type: ignore[return-value]

    @staticmethod
    async def _refuse(failure: RouteFailure, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(getattr(grpc.StatusCode, failure.code), failure.message)

    # -- ModelInfer ----------------------------------------------------------------
    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        features = parse(raw).features
        try:
            answer = await self.dispatcher.dispatch(features, lambda i: self._unary_call(i, "ModelInfer", raw, context))
        except RouteFailure as failure:
            await self._refuse(failure, context)
        return await self._answer(answer, context)

    # -- metadata and health -------------------------------------------------------
    def _metadata_handler(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            for _ in range(2):  # one retry elsewhere, like inference
                try:
                    index = self.dispatcher.any_healthy()
                except RouteFailure as failure:
                    if method == "ServerLive":  # the router itself is live, its backends are not
                        return service_pb2.ServerLiveResponse(live=True).SerializeToString()
                    if method == "ServerReady":
                        return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
                    await self._refuse(failure, context)
                try:
                    return await self._answer(await self._unary_call(index, method, raw, context), context)
                except BackendFailure:
                    self.dispatcher.mark_down(index)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: two backends failed in a row")
            raise AssertionError("abort raises")

        return forward

    @staticmethod
    def _unsupported_handler(method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def refuse(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not supported through the router: it changes per-server state; call each backend",
            )
            raise AssertionError("abort raises")

        return refuse

    # -- ModelStreamInfer ----------------------------------------------------------
    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each message routed on its own; see router/grpc_stream.py."""
        metadata = _metadata(context)
        session = StreamSession(self.dispatcher, lambda index, outgoing: self._stream[index](outgoing, metadata=metadata))
        try:
            async for answer in session.run(requests):
                yield answer
        except StreamAborted as aborted:
            await context.abort(aborted.code, aborted.details)
