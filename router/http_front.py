"""The HTTP/REST front door: KServe v2 endpoints, forwarded to HTTP-capable backends.

Inference bodies (JSON, or a JSON header plus binary tensors when the client
uses Triton's binary-tensor extension) are read once, within the size and time
limits, to find the routing features, and sent on with the headers that
describe them. A compressed body (gzip or deflate, as tritonclient's
`request_compression_algorithm` sends it) is decoded on arrival, so its
features route it and its decoded size counts against the limit (a small
gzip bomb cannot grow past it); it goes on decoded, without Content-Encoding.
An answer is compressed only when the client's own Accept-Encoding asks for it.
A header or parameter the router cannot read is a 400 that names it, never a 500.
Only backends given an HTTP port take HTTP traffic.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from helmrec.router.config import RouterConfig
from helmrec.router.dispatch import BackendFailure, Dispatcher, RouteFailure
from helmrec.router.request_features import Features, from_http
from helmrec.router.statistics import sum_json_statistics

HEADER_LENGTH = "Inference-Header-Content-Length"
# What the router decodes on arrival (aiohttp does it while reading); Triton takes the same two.
REQUEST_ENCODINGS = ("gzip", "deflate", "identity")
# Headers that describe an answer's body; they travel back with it.
_ANSWER_HEADERS = ("Content-Type", "Content-Encoding", HEADER_LENGTH)
_STATUS = {"UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 429}
# Connection-level failures: the backend gave no answer, the request may go elsewhere.
_TRANSPORT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
_NO_HTTP_BACKEND = "the router has no backend with an HTTP port (--backend HOST:PORT,http=PORT)"


def _error(status: int, message: str) -> web.Response:
    """Triton's error shape, which tritonclient.http turns into InferenceServerException."""
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


class BadRequest(Exception):
    """A request the router refuses before any backend sees it; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UnreadableBody(BadRequest):
    """The body stalled or cannot be decoded: after the answer the connection is closed,
    since what is left of the body cannot be read past."""


def _header_text(value: str) -> str:
    """A header as the client wrote it (UTF-8, else Latin-1): aiohttp keeps bytes that are not
    UTF-8 as surrogates."""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _check_inference_header(header: bytes, encoding: str) -> None:
    """Why a body is not a v2 inference request at all (Triton answers some of these with 500)."""
    try:
        parsed = json.loads(header)
    except ValueError as exc:
        decoded = "" if encoding == "identity" else f" once decoded from Content-Encoding {encoding!r}"
        raise BadRequest(400, f"request body: the inference header{decoded} is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise BadRequest(400, f"request body: the inference header must be a JSON object, got {type(parsed).__name__}")
    if not isinstance(parsed.get("inputs"), list):
        raise BadRequest(400, "request body: 'inputs' must be a JSON list of tensors")
    if not isinstance(parsed.get("parameters", {}), dict):
        raise BadRequest(400, "request body: 'parameters' must be a JSON object")


class HttpFront:
    """aiohttp application forwarding v2 REST calls to HTTP-capable backends."""

    def __init__(self, config: RouterConfig, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        # client_max_size bounds what request.read() gathers, decoded bytes included.
        app = web.Application(client_max_size=self.config.max_request_bytes)
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2/models/stats", self.all_statistics)
        app.router.add_get("/v2/models/{model}{tail:(/.*)?}", self.model_get)
        app.router.add_get("/v2{tail:.*}", self.forward_get)
        app.router.add_post("/v2{tail:.*}", self.unsupported)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(
        self, index: int, method: str, request: web.Request, body: bytes | None, identity: bool = False
    ) -> web.Response:
        assert self._session is not None
        base = self.dispatcher.addresses[index].http_base
        headers = {h: request.headers[h] for h in ("Content-Type", HEADER_LENGTH) if h in request.headers}
        # Without it aiohttp would ask for gzip itself and the router would relay a
        # compressed answer to a client that never asked for one.
        headers["Accept-Encoding"] = "identity" if identity else request.headers.get("Accept-Encoding", "identity")
        try:
            async with self._session.request(
                method, f"{base}{request.rel_url}", data=body, headers=headers, auto_decompress=False
            ) as resp:
                payload = await resp.read()
                out = {h: resp.headers[h] for h in _ANSWER_HEADERS if h in resp.headers}
                return web.Response(status=resp.status, body=payload, headers=out)
        except _TRANSPORT_ERRORS as exc:
            raise BackendFailure(f"{type(exc).__name__}: {exc}") from None
        except asyncio.TimeoutError:
            return _error(504, f"backend {self.dispatcher.addresses[index]} did not answer in {self.config.request_timeout_s} s")

    # -- inference -----------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.StreamResponse:
        if not self.dispatcher.http_indices:
            return _error(400, _NO_HTTP_BACKEND)
        try:
            body = await self._body(request)
            features = self._features(request, body)
        except UnreadableBody as bad:
            return await self._refuse_and_close(request, bad.status, bad.message)
        except BadRequest as bad:
            return _error(bad.status, bad.message)
        try:
            return await self.dispatcher.dispatch(
                features, lambda i: self._send(i, "POST", request, body), among=self.dispatcher.http_indices
            )
        except RouteFailure as failure:
            return _error(_STATUS[failure.code], failure.message)

    async def _body(self, request: web.Request) -> bytes:
        """The decoded body, refused early when its model, size or encoding is wrong."""
        refusal = self.config.refusal(request.match_info["model"])
        if refusal is not None:
            raise BadRequest(404, refusal)
        limit = self.config.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(413, f"request body of {request.content_length} bytes exceeds --max-request-bytes {limit}")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in REQUEST_ENCODINGS:  # aiohttp may try to decode it: the rest is unreadable
            raise UnreadableBody(
                400, f"Content-Encoding {encoding!r} is not supported (expected one of {', '.join(REQUEST_ENCODINGS)})"
            )
        try:
            return await asyncio.wait_for(request.read(), self.config.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(413, f"request body exceeds --max-request-bytes {limit} (after decoding {encoding})") from None
        except RequestPayloadError as exc:
            reason = str(exc.__cause__ or exc).strip().splitlines()[-1].strip()
            raise UnreadableBody(400, f"request body cannot be read as Content-Encoding {encoding!r}: {reason}") from None
        except asyncio.TimeoutError:
            promised = "" if request.content_length is None else f" (Content-Length promised {request.content_length} bytes)"
            raise UnreadableBody(
                408, f"request body did not arrive within --body-timeout {self.config.body_timeout_s} s{promised}"
            ) from None

    def _features(self, request: web.Request, body: bytes) -> Features:
        """Routing features; the headers and parameters routing relies on must be well formed."""
        header_length = None
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not (length.isascii() and length.isdigit()) or int(length) > len(body):
                raise BadRequest(
                    400,
                    f"{HEADER_LENGTH} {_header_text(length)!r}: must be a decimal byte count "
                    f"no larger than the body ({len(body)} bytes)",
                )
            header_length = int(length)
        features = from_http(request.match_info["model"], body, header_length, self.dispatcher.reads_candidates)
        if features.route.user_id is None and header_length != 0:  # 0: a raw binary request, no JSON
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            _check_inference_header(body if header_length is None else body[:header_length], encoding)
        if features.sequence is not None:
            sequence_id = features.sequence[1]
            if isinstance(sequence_id, bool) or not isinstance(sequence_id, (int, str)):
                raise BadRequest(
                    400,
                    f"parameters.sequence_id: must be an unsigned integer or a string, got {json.dumps(sequence_id)}",
                )
        return features

    async def _refuse_and_close(self, request: web.Request, status: int, message: str) -> web.StreamResponse:
        """The answer, then the connection is closed: a client that stalls mid-body holds nothing more."""
        response = _error(status, message)
        await response.prepare(request)
        await response.write_eof()
        if request.protocol is not None:
            request.protocol.force_close()  # the answer is flushed first: asyncio transports drain on close
        return response

    # -- health and metadata -------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        """The router answers for itself: it is live while it runs."""
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return await self.forward_get(request)

    async def model_get(self, request: web.Request) -> web.Response:
        """Metadata, config, readiness or statistics of one model: only of an exposed one."""
        refusal = self.config.refusal(request.match_info["model"])
        if refusal is not None:
            return _error(404, refusal)
        if request.match_info["tail"].endswith("/stats"):
            return await self.all_statistics(request)
        return await self.forward_get(request)

    async def all_statistics(self, request: web.Request) -> web.Response:
        """Statistics of every healthy HTTP backend, summed per (model, version), exposed models only.

        The same rules as gRPC's (router/statistics.py), on Triton's JSON so its
        numbers stay numbers. A backend that fails before answering leaves
        rotation; one that answers an error is left out of the sum; only when no
        backend answered does the client get an error (the first one's).
        """
        if not self.dispatcher.http_indices:
            return _error(400, _NO_HTTP_BACKEND)
        healthy = [i for i in self.dispatcher.http_indices if self.dispatcher.backends[i].healthy]
        if not healthy:
            return _error(503, f"no healthy backend (all {len(self.dispatcher.http_indices)} are down)")
        results = await asyncio.gather(
            *(self._send(i, "GET", request, None, identity=True) for i in healthy), return_exceptions=True
        )
        answers, errors = [], []
        for index, result in zip(healthy, results):
            if isinstance(result, BackendFailure):
                self.dispatcher.mark_down(index)
            elif isinstance(result, BaseException):
                raise result
            elif result.status != 200 or result.body is None:
                errors.append(result)
            else:
                answers.append(json.loads(bytes(result.body)))  # type: ignore[arg-type]
        if not answers:
            return errors[0] if errors else _error(503, f"{request.path}: every healthy backend failed before answering")
        summed = sum_json_statistics(answers, self.config.exposed_models)
        return web.Response(status=200, text=json.dumps(summed), content_type="application/json")

    async def forward_get(self, request: web.Request, identity: bool = False) -> web.Response:
        """Metadata, config, readiness, statistics: from one healthy backend (one retry)."""
        if not self.dispatcher.http_indices:
            return _error(400, _NO_HTTP_BACKEND)
        for _ in range(2):
            try:
                index = self.dispatcher.any_healthy(self.dispatcher.http_indices)
            except RouteFailure as failure:
                return _error(_STATUS[failure.code], failure.message)
            try:
                return await self._send(index, "GET", request, None, identity)
            except BackendFailure:
                self.dispatcher.mark_down(index)
        return _error(503, f"{request.path}: two backends failed in a row")

    async def unsupported(self, request: web.Request) -> web.Response:
        return _error(
            400,
            f"POST {request.path} is not supported through the router: it changes per-server state; call each backend",
        )
