"""The HTTP/REST front door: KServe v2 endpoints, forwarded with bodies untouched.

Inference bodies (JSON, or a JSON header plus binary tensors when the client
uses Triton's binary-tensor extension) are read once to find the routing
features and sent on as the same bytes, with the headers that describe them.
Only backends given an HTTP port take HTTP traffic.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from helmrec.router.config import RouterConfig
from helmrec.router.dispatch import BackendFailure, Dispatcher, RouteFailure
from helmrec.router.request_features import from_http

HEADER_LENGTH = "Inference-Header-Content-Length"
# Headers that describe a body; they travel with it in both directions.
_BODY_HEADERS = ("Content-Type", "Content-Encoding", HEADER_LENGTH)
_REQUEST_HEADERS = (*_BODY_HEADERS, "Accept-Encoding")
_STATUS = {"UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 429}
# Connection-level failures: the backend gave no answer, the request may go elsewhere.
_TRANSPORT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def _error(status: int, message: str) -> web.Response:
    """Triton's error shape, which tritonclient.http turns into InferenceServerException."""
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


class HttpFront:
    """aiohttp application forwarding v2 REST calls to HTTP-capable backends."""

    def __init__(self, config: RouterConfig, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.http_backends = [i for i, b in enumerate(config.backends) if b.http_base is not None]
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)  # no body limit: Triton sets its own
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
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

    async def _send(self, index: int, method: str, request: web.Request, body: bytes | None) -> web.Response:
        assert self._session is not None
        base = self.config.backends[index].http_base
        headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
        try:
            async with self._session.request(
                method, f"{base}{request.rel_url}", data=body, headers=headers, auto_decompress=False
            ) as resp:
                payload = await resp.read()
                out = {h: resp.headers[h] for h in _BODY_HEADERS if h in resp.headers}
                return web.Response(status=resp.status, body=payload, headers=out)
        except _TRANSPORT_ERRORS as exc:
            raise BackendFailure(f"{type(exc).__name__}: {exc}") from None
        except asyncio.TimeoutError:
            return _error(504, f"backend {self.config.backends[index]} did not answer in {self.config.request_timeout_s} s")

    # -- inference -----------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        if not self.http_backends:
            return _error(400, "the router has no backend with an HTTP port (--backend HOST:PORT,http=PORT)")
        body = await request.read()
        length = request.headers.get(HEADER_LENGTH)
        header_length = int(length) if length is not None and length.isdigit() else None
        encoded = "Content-Encoding" in request.headers  # compressed bodies route without features
        features = from_http(request.match_info["model"], b"{}" if encoded else body, None if encoded else header_length)
        try:
            return await self.dispatcher.dispatch(
                features, lambda i: self._send(i, "POST", request, body), among=self.http_backends
            )
        except RouteFailure as failure:
            return _error(_STATUS[failure.code], failure.message)

    # -- health and metadata -------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        """The router answers for itself: it is live while it runs."""
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if not self.http_backends:
            return _error(400, "the router has no backend with an HTTP port (--backend HOST:PORT,http=PORT)")
        return await self.forward_get(request)

    async def forward_get(self, request: web.Request) -> web.Response:
        """Metadata, config, readiness, statistics: from one healthy backend (one retry)."""
        if not self.http_backends:
            return _error(400, "the router has no backend with an HTTP port (--backend HOST:PORT,http=PORT)")
        for _ in range(2):
            try:
                index = self.dispatcher.any_healthy(self.http_backends)
            except RouteFailure as failure:
                return _error(_STATUS[failure.code], failure.message)
            try:
                return await self._send(index, "GET", request, None)
            except BackendFailure:
                self.dispatcher.mark_down(index)
        return _error(503, f"{request.path}: two backends failed in a row")

    async def unsupported(self, request: web.Request) -> web.Response:
        return _error(
            400,
            f"POST {request.path} is not supported through the router: it changes per-server state; call each backend",
        )
