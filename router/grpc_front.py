"""The gRPC front door: Triton's `inference.GRPCInferenceService`, forwarded byte for byte.

Handlers are registered generically with no (de)serializers, so a request's
bytes — raw_input_contents included — reach the backend exactly as the client
sent them and the backend's answer bytes reach the client unchanged. The router
parses a copy of a ModelInfer request to read its routing features and the
model it calls: only the models the router exposes (RouterConfig.exposed_models)
are reachable, by inference or metadata; the others answer NOT_FOUND, and the
all-model statistics list only the exposed ones, summed over the backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from helmrec.router.config import RouterConfig
from helmrec.router.dispatch import BackendFailure, Dispatcher, RouteFailure
from helmrec.router.grpc_stream import StreamSession, UndecodableRequest, failed_before_answer, parse
from helmrec.router.statistics import sum_statistics

SERVICE = "inference.GRPCInferenceService"
# Forwarded to one healthy backend: every backend serves the same repository
# (ModelStatistics goes to all of them and is summed: router/statistics.py).
METADATA_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
)
# These change or read per-process state (shared-memory regions, loaded models,
# log and trace settings); sent to one backend of N they would silently diverge.
# They are also Triton's restricted APIs (helmrec.launcher.admin): a backend
# answers them UNAVAILABLE without its admin header, which a router must not
# mistake for a dead backend.
UNSUPPORTED_METHODS = (
    "RepositoryIndex",
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
# The router's own channels to its backends: their answers are not capped (the
# client-facing server caps requests, router/server.py).
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
# Metadata methods that name one model, with the request message that carries the name.
MODEL_METHODS = {
    "ModelReady": service_pb2.ModelReadyRequest,
    "ModelMetadata": service_pb2.ModelMetadataRequest,
    "ModelConfig": service_pb2.ModelConfigRequest,
    "ModelStatistics": service_pb2.ModelStatisticsRequest,
}
# Transport headers the router's own channel sets; the client's copies are not forwarded.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "accept-encoding"})


@dataclass(frozen=True)
class BackendError:
    """A backend's own error answer, relayed to the client with its code and text."""

    code: grpc.StatusCode
    details: str


@dataclass(frozen=True)
class _BackendLink:
    """The router's channel to one backend and the calls it makes on it."""

    channel: grpc.aio.Channel
    unary: dict[str, grpc.aio.UnaryUnaryMultiCallable]
    stream: grpc.aio.StreamStreamMultiCallable

    @classmethod
    def open(cls, target: str) -> _BackendLink:
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        unary = {m: channel.unary_unary(f"/{SERVICE}/{m}") for m in ("ModelInfer", *METADATA_METHODS)}
        return cls(channel, unary, channel.stream_stream(f"/{SERVICE}/ModelStreamInfer"))


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
        # Per backend slot, opened on first use and kept (one HTTP/2 connection, its
        # multicallables built once); closed once a removed backend has drained.
        self._links: dict[int, _BackendLink] = {}

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

    def _link(self, index: int) -> _BackendLink:
        link = self._links.get(index)
        if link is None:
            link = self._links[index] = _BackendLink.open(self.dispatcher.addresses[index].grpc_target)
        return link

    async def close_drained(self) -> None:
        """Close the channels of removed backends with nothing left in flight."""
        drained = [i for i in self._links if self.dispatcher.backends[i].retired and not self.dispatcher.backends[i].in_flight]
        await asyncio.gather(*(self._links.pop(i).channel.close() for i in drained))

    async def close(self) -> None:
        await asyncio.gather(*(link.channel.close() for link in self._links.values()))

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.config.request_timeout_s if remaining is None else max(0.001, remaining)

    async def _unary_call(
        self, index: int, method: str, raw: bytes, context: grpc.aio.ServicerContext
    ) -> bytes | BackendError:
        try:
            return await self._link(index).unary[method](raw, timeout=self._timeout(context), metadata=_metadata(context))
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

    async def _check_model(self, model: str, context: grpc.aio.ServicerContext) -> None:
        refusal = self.config.refusal(model)
        if refusal is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, refusal)

    # -- ModelInfer ----------------------------------------------------------------
    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            message = parse(raw, self.dispatcher.reads_candidates)
        except UndecodableRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._check_model(message.model, context)
        try:
            answer = await self.dispatcher.dispatch(
                message.features, lambda i: self._unary_call(i, "ModelInfer", raw, context)
            )
        except RouteFailure as failure:
            await self._refuse(failure, context)
        return await self._answer(answer, context)

    # -- metadata and health -------------------------------------------------------
    async def _check_named_model(self, method: str, raw: bytes, context: grpc.aio.ServicerContext) -> None:
        """A per-model metadata call must name an exposed model (ModelStatistics may name none: all)."""
        try:
            name = MODEL_METHODS[method].FromString(raw).name
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request cannot be decoded: {exc}")
        if name or method != "ModelStatistics":
            await self._check_model(name, context)

    async def _cluster_statistics(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Statistics (of all models when none is named) of every healthy backend, summed, exposed models only.

        A backend that fails before answering leaves rotation; one that answers
        an error (e.g. its model is still loading after a restart) is left out of
        the sum. Only when no backend answered does the client get an error.
        """
        healthy = [i for i, b in enumerate(self.dispatcher.backends) if b.healthy]
        if not healthy:
            n = len(self.dispatcher.listed())
            await self._refuse(RouteFailure("UNAVAILABLE", f"no healthy backend (all {n} are down)"), context)
        results = await asyncio.gather(
            *(self._unary_call(i, "ModelStatistics", raw, context) for i in healthy), return_exceptions=True
        )
        answers, errors = [], []
        for index, result in zip(healthy, results):
            if isinstance(result, BackendFailure):
                self.dispatcher.mark_down(index)
            elif isinstance(result, BackendError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.append(service_pb2.ModelStatisticsResponse.FromString(result))
        if not answers:
            if errors:
                await self._answer(errors[0], context)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ModelStatistics: every healthy backend failed before answering")
        return sum_statistics(answers, self.config.exposed_models).SerializeToString()

    def _metadata_handler(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if method in MODEL_METHODS:
                await self._check_named_model(method, raw, context)
            if method == "ModelStatistics":
                return await self._cluster_statistics(raw, context)
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
                    answer = await self._answer(await self._unary_call(index, method, raw, context), context)
                except BackendFailure:
                    self.dispatcher.mark_down(index)
                    continue
                return answer
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: two backends failed in a row")
            raise AssertionError("abort raises")

        return forward

    @staticmethod
    def _unsupported_handler(method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def refuse(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not supported through the router: it reads or changes one server's state "
                "(an admin API, restricted on the backends); call each backend with its admin header",
            )
            raise AssertionError("abort raises")

        return refuse

    # -- ModelStreamInfer ----------------------------------------------------------
    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each message routed on its own; see router/grpc_stream.py."""
        metadata = _metadata(context)
        session = StreamSession(
            self.dispatcher,
            lambda index, outgoing: self._link(index).stream(outgoing, metadata=metadata),
            self.config.refusal,
        )
        async for answer in session.run(requests):
            yield answer
