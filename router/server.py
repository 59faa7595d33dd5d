"""The router process: gRPC and HTTP front doors, health monitor, own metrics.

`RouterServer` is the asyncio object (`helmrec route` runs it in the main
loop); `RouterThread` runs one in a background thread with its own loop, for
tests and benchmarks that drive it from synchronous client code.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from types import TracebackType

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, start_http_server

from helmrec.router.backend_file import BackendFileWatcher
from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.dispatch import Dispatcher, RouterStats
from helmrec.router.grpc_front import GrpcFront
from helmrec.router.health import HealthMonitor
from helmrec.router.http_front import HttpFront
from helmrec.router.native_hop import NativeHop
from helmrec.router.router_metrics import RouterCollector

log = logging.getLogger("helmrec.router")


class RouterServer:
    """All parts of one router, started and stopped together."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.dispatcher = Dispatcher(config)
        # Built in start(): gRPC aio channels bind to the loop that creates them.
        self.monitor: HealthMonitor | None = None
        self.grpc_front: GrpcFront | None = None
        self.grpc_port = 0
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._metrics_server: object | None = None
        self.watcher: BackendFileWatcher | None = None
        self.hop: NativeHop | None = None

    @property
    def stats(self) -> RouterStats:
        """The router's counters: the dispatcher's, plus the native hop's last report (every 0.5 s)."""
        return self.dispatcher.stats if self.hop is None else self.dispatcher.stats.plus(self.hop.stats.router)

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.http_port}"

    async def start(self) -> None:
        """Bind every port first (a busy port fails fast), probe the backends once, then serve."""
        self.monitor = HealthMonitor(self.config, self.dispatcher)
        self.grpc_front = GrpcFront(self.config, self.dispatcher)
        # SO_REUSEPORT only among the workers of one `helmrec route --workers N`: otherwise a
        # second router on the same port must fail, not silently share it. A message longer
        # than max_request_bytes is refused with RESOURCE_EXHAUSTED from its length prefix,
        # before its bytes are gathered into a buffer.
        #
        # With the native data plane the hop owns the public port and this server
        # listens on loopback for what the hop relays (metadata, streams, sequences).
        native = self.config.data_plane == "native"
        self._grpc = grpc.aio.server(
            options=(
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", self.config.max_request_bytes),
                ("grpc.so_reuseport", int(self.config.workers > 1 and not native)),
            )
        )
        self._grpc.add_generic_rpc_handlers((self.grpc_front.handler(),))
        address = "127.0.0.1:0" if native else f"{self.config.host}:{self.config.grpc_port}"
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError:
            raise OSError(f"--grpc-port {self.config.grpc_port}: cannot bind {address} (in use?)") from None
        http_sock = self._bind_http()
        await self.monitor.start()
        await self._grpc.start()
        if native:
            self.hop = NativeHop(self.config, self.dispatcher)
            await self.hop.start(fallback=f"127.0.0.1:{self.grpc_port}")
            self.grpc_port = self.hop.port
        if http_sock is not None:
            self._http = web.AppRunner(HttpFront(self.config, self.dispatcher).app(), access_log=None)
            await self._http.setup()
            await web.SockSite(self._http, http_sock).start()
        if self.config.metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(RouterCollector(self.dispatcher, self.hop))
            self._metrics_server, _ = start_http_server(self.config.metrics_port, self.config.host, registry)
            self.metrics_port = self._metrics_server.server_port  # type: ignore[attr-defined]
        if self.config.backend_file is not None:
            self.watcher = BackendFileWatcher(
                Path(self.config.backend_file), self.apply_backends, self.grpc_front.close_drained,
                self.config.backend_file_interval_s,
            )
            self.watcher.start()

    async def apply_backends(self, addresses: tuple[BackendAddress, ...]) -> None:
        """Make `addresses` the backend list: new ones are probed (in rotation once ready),
        removed ones stop taking requests and drain."""
        assert self.monitor is not None
        added, removed = self.dispatcher.update_backends(addresses)
        for index in removed:
            log.warning("backend %s removed from the list: draining %d in flight", self.dispatcher.backends[index].name,
                        self.dispatcher.backends[index].in_flight)
            await self.monitor.unwatch(index)
        for index in added:
            log.warning("backend %s added to the list", self.dispatcher.backends[index].name)
        await asyncio.gather(*(self.monitor.watch(i) for i in added))

    def _bind_http(self) -> socket.socket | None:
        if self.config.http_port is None:
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.config.workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.config.host, self.config.http_port))
        except OSError as exc:
            sock.close()
            raise OSError(f"--http-port {self.config.http_port}: cannot bind {self.config.host} ({exc.strerror})") from None
        self.http_port = sock.getsockname()[1]
        return sock

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        if self.hop is not None:
            await self.hop.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        if self._http is not None:
            await self._http.cleanup()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        if self.monitor is not None:
            await self.monitor.stop()
        if self.grpc_front is not None:
            await self.grpc_front.close()


class RouterThread:
    """A RouterServer on its own event loop in a daemon thread (context manager)."""

    def __init__(self, config: RouterConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = RouterServer(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="helmrec-router", daemon=True)

    def start(self) -> RouterThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=30)
        return self

    def call(self, coro: asyncio.Future[object] | object, timeout: float = 30) -> object:
        """Run a coroutine on the router's loop (e.g. a health probe) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)  # type: ignore[arg-type]

    async def _shutdown(self) -> None:
        """Stop the server, then finish every task left (stream readers, pumps) before the loop closes.

        A task or async generator still pending on a closed loop is only
        collected later, as an 'Event loop is closed' error at a random moment.
        """
        await self.server.stop()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        await self.loop.shutdown_asyncgens()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> RouterThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
