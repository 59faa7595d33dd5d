"""Background watch over the backends: readiness probes and metrics scrapes.

A backend that fails a probe leaves rotation (and its cache estimates are
dropped: whatever comes back has an empty cache); it returns as soon as a probe
succeeds again. Metrics scrapes feed alpha, queue depth and the KV eviction
model of the placement record; the last report of each backend is kept for
tests, benchmarks and the router's own /metrics.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from helmrec.router.backend_metrics import BackendReport, parse_report
from helmrec.router.config import RouterConfig
from helmrec.router.dispatch import Dispatcher
from helmrec.router.grpc_front import CHANNEL_OPTIONS

log = logging.getLogger("helmrec.router")


class HealthMonitor:
    """Probes readiness over gRPC and scrapes metrics over HTTP, one task per backend."""

    def __init__(self, config: RouterConfig, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        # The last scrape of each backend slot (tests, benchmarks); absent until one succeeds.
        self.reports: dict[int, BackendReport] = {}
        # Per backend slot: a probe channel of its own (a probe is never queued behind
        # inference) and its probe and scrape loops; dropped when the backend is removed.
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stubs: dict[int, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        self._tasks: dict[int, list[asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """First probe of every backend before serving, so the first request sees true health."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.health_timeout_s))
        await asyncio.gather(*(self.watch(i) for i in self.dispatcher.listed()))

    async def watch(self, index: int) -> None:
        """Probe and scrape a backend once now, then keep watching it."""
        target = self.dispatcher.addresses[index].grpc_target
        self._channels[index] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stubs[index] = service_pb2_grpc.GRPCInferenceServiceStub(self._channels[index])
        await self.probe(index)
        await self.scrape(index)
        self._tasks[index] = [asyncio.create_task(self._probe_loop(index)), asyncio.create_task(self._scrape_loop(index))]

    async def unwatch(self, index: int) -> None:
        """Stop watching a removed backend (it is retired: no probe may bring it back)."""
        tasks = self._tasks.pop(index, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stubs.pop(index, None)
        channel = self._channels.pop(index, None)
        if channel is not None:
            await channel.close()
        self.reports.pop(index, None)

    async def stop(self) -> None:
        await asyncio.gather(*(self.unwatch(i) for i in list(self._channels)))
        if self._session is not None:
            await self._session.close()

    async def probe(self, index: int) -> bool:
        """ServerReady on one backend; updates its health and returns it."""
        backend = self.dispatcher.backends[index]
        try:
            reply = await self._stubs[index].ServerReady(
                service_pb2.ServerReadyRequest(), timeout=self.config.health_timeout_s
            )
            ready = bool(reply.ready)
        except grpc.aio.AioRpcError:
            ready = False
        if backend.retired:
            return False
        if ready and not backend.healthy:
            log.warning("backend %s is back in rotation", backend.name)
            backend.mark_up()
        elif not ready and backend.healthy:
            log.warning("backend %s is out of rotation (not ready)", backend.name)
            self.dispatcher.mark_down(index)
        return ready

    async def scrape(self, index: int) -> BackendReport | None:
        """Read the backend's metrics into its state; None when it has no metrics port or fails."""
        url = self.dispatcher.addresses[index].metrics_url
        if url is None or self._session is None:
            return None
        try:
            async with self._session.get(url) as resp:
                text = await resp.text()
            report = parse_report(text)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("metrics of %s unavailable: %s", url, exc)
            return None
        backend = self.dispatcher.backends[index]
        if backend.retired:
            return None
        backend.alpha = report.alpha
        backend.queue_depth = report.pending_requests or 0.0
        backend.kv.observe_backend(report.kv_cached_users, report.kv_evictions_total)
        self.reports[index] = report
        return report

    async def _probe_loop(self, index: int) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.probe(index)

    async def _scrape_loop(self, index: int) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval_s)
            await self.scrape(index)
