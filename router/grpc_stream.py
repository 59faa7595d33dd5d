"""ModelStreamInfer through the router: every message of a client stream is routed on its own.

A client that multiplexes many users over one stream must not pin them all to
one backend, so each message goes where the policy sends it (KV-aware by user,
sticky by sequence) over one backend stream per backend the session uses, and
the answers of all of them flow back into the client's stream as they come.
Each message counts in flight at its backend until its answer (matched by
request id, else oldest first: the project's models answer once per request).

No message is ever dropped: every one the client sent before its stream ends
gets an answer or an in-stream error answer (Triton's own way to fail one
request of a stream without ending it), and the stream goes on. A message the
router cannot decode, or one for a model the router does not expose, is
answered with an error at once. A backend stream failing with UNAVAILABLE sends
its unanswered messages once more elsewhere; a backend stream that ends any
other way (another status, or OK with messages unanswered: Triton ends a
stream so on a message it cannot decode) fails each of its unanswered messages
with an error answer naming the backend and its status.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from helmrec.router.dispatch import Dispatcher, RouteFailure
from helmrec.router.request_features import Features, from_grpc

# (backend index, outgoing messages) -> the backend stream call carrying them.
OpenCall = Callable[[int, AsyncIterator[bytes]], grpc.aio.StreamStreamCall]
# model name -> why it may not be called through the router, or None (RouterConfig.refusal).
Refusal = Callable[[str], "str | None"]


def failed_before_answer(err: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE is what gRPC reports for refused, reset and closed connections: the backend
    did not answer, so the request may go once more elsewhere."""
    return err.code() == grpc.StatusCode.UNAVAILABLE


class UndecodableRequest(ValueError):
    """Bytes that are not a ModelInferRequest: answered INVALID_ARGUMENT, never forwarded."""


@dataclass
class _Message:
    features: Features
    raw: bytes
    request_id: str
    model: str
    retried: bool = False


@dataclass(eq=False)
class _Link:
    """The backend stream that carries this session's messages routed to one backend."""

    index: int
    outbox: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    pending: deque[_Message] = field(default_factory=deque)
    closed: bool = False
    task: asyncio.Task[None] | None = None
    call: grpc.aio.StreamStreamCall | None = None

    async def outgoing(self) -> AsyncIterator[bytes]:
        while (raw := await self.outbox.get()) is not None:
            yield raw

    def send(self, message: _Message) -> None:
        self.pending.append(message)
        self.outbox.put_nowait(message.raw)

    def close(self) -> None:
        """No more messages: the backend answers what it has and ends its stream."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)

    def take(self, request_id: str) -> _Message | None:
        """The pending message this answer belongs to: by request id, else the oldest."""
        if request_id:
            for message in self.pending:
                if message.request_id == request_id:
                    self.pending.remove(message)
                    return message
        return self.pending.popleft() if self.pending else None


def parse(raw: bytes, candidates: bool = True) -> _Message:
    """A ModelInferRequest as the router reads it (for ModelInfer too); its candidates only if asked.

    Bytes it cannot decode are refused here rather than forwarded: the router
    could not tell which model they call, and Triton ends a whole stream on them.
    The parse itself is cheap (upb, ~5 us for a 32-item request: the tensors'
    bytes are not copied out); reading the features from it is most of the cost.
    """
    try:
        request = service_pb2.ModelInferRequest.FromString(raw)
    except DecodeError as exc:
        raise UndecodableRequest(f"ModelInferRequest: the message ({len(raw)} bytes) cannot be decoded: {exc}") from None
    return _Message(from_grpc(request, candidates), raw, request.id, request.model_name)


def error_answer(model: str, request_id: str, code: str, text: str) -> bytes:
    """An in-stream error for one message; tritonclient hands it to the callback as an exception."""
    return service_pb2.ModelStreamInferResponse(
        error_message=f"[StatusCode.{code}] {text}",
        infer_response=service_pb2.ModelInferResponse(model_name=model, id=request_id),
    ).SerializeToString()


class StreamSession:
    """One client stream: reads it, routes each message, merges the backends' answers."""

    def __init__(self, dispatcher: Dispatcher, open_call: OpenCall, refusal: Refusal) -> None:
        self.dispatcher = dispatcher
        self._open_call = open_call
        self._refusal = refusal
        self._links: dict[int, _Link] = {}  # the open link to each backend
        self._all: list[_Link] = []  # every link of the session, open, draining or done
        self._answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._client_done = False
        self._changed = asyncio.Event()  # a link opened or finished

    async def run(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The answers to the client, as they come, until every message is answered."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while (item := await self._answers.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for link in self._all:
                link.close()  # ends its outgoing generator
                if link.call is not None:
                    link.call.cancel()
                if link.task is not None:
                    link.task.cancel()
                while link.pending:  # the client is gone: release what is still counted in flight
                    self.dispatcher.finish(link.pending.popleft().features, link.index, ok=False)

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        async for raw in requests:
            self.dispatcher.stats.requests += 1
            try:
                message = parse(raw, self.dispatcher.reads_candidates)
            except UndecodableRequest as exc:
                self._answers.put_nowait(error_answer("", "", "INVALID_ARGUMENT", str(exc)))
                continue
            self._route(message)
        self._client_done = True
        for link in self._links.values():
            link.close()
        # Wait for every backend stream, including ones a retry opens meanwhile.
        while not all(link.task is not None and link.task.done() for link in self._all):
            self._changed.clear()
            await self._changed.wait()
        await self._answers.put(None)

    def _route(self, message: _Message) -> None:
        refusal = self._refusal(message.model)
        if refusal is not None:
            self._answers.put_nowait(error_answer(message.model, message.request_id, "NOT_FOUND", refusal))
            return
        try:
            index = self.dispatcher.place_counted(message.features)
        except RouteFailure as failure:
            self._answers.put_nowait(error_answer(message.model, message.request_id, failure.code, failure.message))
            return
        link = self._links.get(index)
        if link is None or link.closed:  # a closed link only drains: a new one carries this message
            link = self._links[index] = self._open(index)
        link.send(message)
        if self._client_done:
            link.close()

    def _open(self, index: int) -> _Link:
        link = _Link(index)
        link.call = self._open_call(index, link.outgoing())
        link.task = asyncio.create_task(self._pump(link))
        self._all.append(link)
        self._changed.set()
        return link

    async def _pump(self, link: _Link) -> None:
        try:
            assert link.call is not None
            async for answer in link.call:
                request_id = service_pb2.ModelStreamInferResponse.FromString(answer).infer_response.id
                message = link.take(request_id)
                if message is not None:
                    self.dispatcher.answered(message.features, link.index)
                await self._answers.put(answer)
            self._fail_unanswered(link, "OK", "ended its stream")
        except grpc.aio.AioRpcError as err:
            if not failed_before_answer(err):
                self._fail_unanswered(link, err.code().name, f"ended its stream with {err.code().name}: {err.details()}")
                return
            unanswered = list(link.pending)
            link.pending.clear()
            link.closed = True
            for message in unanswered:
                try:
                    self.dispatcher.failed(message.features, link.index, message.retried, err.details() or "")
                except RouteFailure as failure:
                    await self._answers.put(error_answer(message.model, message.request_id, failure.code, failure.message))
                    continue
                message.retried = True
                self._route(message)
        finally:
            self._changed.set()

    def _fail_unanswered(self, link: _Link, code: str, what: str) -> None:
        """The backend's stream is over: each message it left unanswered gets an error answer."""
        link.closed = True
        code = "INTERNAL" if code == "OK" else code
        backend = self.dispatcher.backends[link.index].name
        while link.pending:
            message = link.pending.popleft()
            self.dispatcher.finish(message.features, link.index, ok=False)
            text = f"backend {backend} {what} before answering request {message.request_id!r} of model {message.model!r}"
            self._answers.put_nowait(error_answer(message.model, message.request_id, code, text))
