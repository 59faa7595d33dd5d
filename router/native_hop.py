"""The native data plane: `helmrec-hop` serves the public gRPC port, this process drives it.

`helmrec route --data-plane native` keeps everything but the hot path in
Python. The hop (router/native/hop.cc, grpc++) takes each ModelInfer, reads
USER_ID from its wire bytes, places it with the same policy and the same
rendezvous seeds as router/policies.py, and forwards the bytes to the
backend; other methods, streams and sticky sequences it relays to this
process's own gRPC server on a loopback port. This process owns the control
plane: probes, scrapes and the backend list reach the hop as lines on its
stdin; the hop answers with `down` (a backend failed before answering) and
counters, which feed the dispatcher's state and the router's metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from helmrec.router.config import RouterConfig
from helmrec.router.dispatch import Dispatcher, RouterStats
from helmrec.router.rendezvous import backend_seed

log = logging.getLogger("helmrec.router")

BINARY = "helmrec-hop"
SOURCE = Path(__file__).parent / "native" / "hop.cc"
BUILT = SOURCE.with_name(BINARY)
# How often the backends' state is compared with what the hop was last told.
SYNC_INTERVAL_S = 0.05
READY_TIMEOUT_S = 10.0


class HopMissing(OSError):
    """No helmrec-hop binary: the native data plane cannot start."""


def locate() -> Path:
    """The hop binary: $HELMREC_HOP, the one `make hop` builds next to its source, or one on PATH."""
    explicit = os.environ.get("HELMREC_HOP")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise HopMissing(f"HELMREC_HOP={explicit}: not an executable file")
        return Path(explicit)
    if os.access(BUILT, os.X_OK):
        return BUILT
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    raise HopMissing(
        f"--data-plane native needs the {BINARY} binary: build it with `make hop` "
        "(needs grpc++: apt-get install libgrpc++-dev pkg-config), put it on PATH, or set HELMREC_HOP"
    )


@dataclass
class HopStats:
    """The hop's counters, as of its last report (every 0.5 s)."""

    router: RouterStats = field(default_factory=RouterStats)
    in_flight: dict[int, int] = field(default_factory=dict)
    served: dict[int, int] = field(default_factory=dict)


def hop_args(config: RouterConfig, fallback: str) -> list[str]:
    """The hop's command line for this router's settings."""
    args = [
        f"--listen={config.host}:{config.grpc_port}",
        f"--fallback={fallback}",
        f"--policy={config.policy}",
        f"--max-in-flight={config.max_in_flight_per_backend}",
        f"--replicas={config.workers}",
        f"--request-timeout-s={config.request_timeout_s}",
        f"--max-request-bytes={config.max_request_bytes}",
    ]
    return args + [f"--expose-model={model}" for model in config.exposed_models]


class NativeHop:
    """One helmrec-hop process, kept in step with a dispatcher's backends."""

    def __init__(self, config: RouterConfig, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.stats = HopStats()
        self.port = 0
        self.exited = asyncio.Event()  # set when the hop ends, stopped or not
        self._proc: asyncio.subprocess.Process | None = None
        self._sent: dict[int, tuple[bool, bool, float]] = {}  # slot -> (retired, healthy, queue) last sent
        self._reader: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, fallback: str) -> None:
        """Start the hop on the public gRPC port, relaying the rest to `fallback`; returns once it serves."""
        self._proc = await asyncio.create_subprocess_exec(
            str(locate()), *hop_args(self.config, fallback),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            line = b""
        kind, _, port = line.decode().strip().partition("\t")
        if kind != "ready":
            await self.stop()
            raise OSError(
                f"--grpc-port {self.config.grpc_port}: the native hop did not start on "
                f"{self.config.host}:{self.config.grpc_port} (its error is above)"
            )
        self.port = int(port)
        self._sync()
        self._reader = asyncio.create_task(self._read())
        self._syncer = asyncio.create_task(self._keep_in_step())

    def _send(self, *lines: str) -> None:
        if self._proc is not None and self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.write("".join(line + "\n" for line in lines).encode())

    def _sync(self) -> None:
        """Tell the hop what changed: new slots, removals, health and queues."""
        lines = []
        for slot, backend in enumerate(self.dispatcher.backends):
            state = (backend.retired, backend.healthy, backend.queue_depth)
            last = self._sent.get(slot)
            if last == state:
                continue
            if last is None or (last[0] and not backend.retired):
                target = self.dispatcher.addresses[slot].grpc_target
                lines.append(f"backend\t{slot}\t{target}\t{backend_seed(backend.name)}\t{backend.name}")
            if backend.retired:
                lines.append(f"retire\t{slot}")
            lines.append(f"health\t{slot}\t{int(backend.healthy)}\t{backend.queue_depth}")
            self._sent[slot] = state
        if lines:
            self._send(*lines)

    async def _keep_in_step(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            self._sync()

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            kind, *fields = raw.decode().rstrip("\n").split("\t")
            if kind == "down":
                slot = int(fields[0])
                backend = self.dispatcher.backends[slot]
                if backend.healthy:
                    log.warning("backend %s out of rotation: failed before answering (%s)", backend.name, fields[1])
                self.dispatcher.mark_down(slot)
            elif kind == "stats":
                requests, answered, retries, unavailable, overloaded = map(int, fields)
                self.stats.router = RouterStats(requests, answered, retries, unavailable, overloaded)
            elif kind == "slot":
                slot, in_flight, served = map(int, fields)
                self.stats.in_flight[slot] = in_flight
                self.stats.served[slot] = served
        code = await self._proc.wait()
        if not self._stopping:
            log.error("the native hop (%s) exited with code %s: the router stops", BINARY, code)
        self.exited.set()

    async def stop(self) -> None:
        """Close the hop's stdin (it drains and exits), then end it if it lingers."""
        self._stopping = True
        if self._syncer is not None:
            self._syncer.cancel()
        if self._proc is None:
            return
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except asyncio.TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        tasks = [t for t in (self._reader, self._syncer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
