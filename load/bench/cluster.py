"""The processes a benchmark run measures: N tritonservers and `helmrec route` in front of them.

Everything is a real process on loopback ports: the nodes are the bundled
tritonserver on a staged copy of model_repository/ (seeded weights, the run's
pool budget and alpha controller), the router is `helmrec route` as a
subprocess, so the load generator, the router and the nodes never share a
Python interpreter (or its GIL) with each other or with the benchmark.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient

from helmrec import schema
from helmrec.launcher import LauncherError, TritonServer, free_port
from helmrec.launcher.repository import WEIGHTS, control_window_s, stage_repository
from helmrec.load.client import infer_inputs
from helmrec.router.config import DATA_PLANES, POLICIES
from helmrec.schema import Limits
from helmrec.serving.network import read_limits

ADAPTIVE = "adaptive"
PORT_ATTEMPTS = 3
# The line `helmrec route` prints once it serves: "router ready (pid ...", or with --workers one
# "router worker K ready (pid ..." per worker.
ROUTER_READY = re.compile(r"^router (worker \d+ )?ready \(pid", re.M)
# What tritonserver and `helmrec route` say when a port was bound by someone else first.
PORT_TAKEN = ("already in use", "cannot bind")
T = TypeVar("T")
# Far above any benchmark trace's user ids, so warm-up never touches a measured user's KV entry.
WARM_UP_USER = 1 << 40
# The probe's user (below the warm-up users, above every trace's) and its request count.
PROBE_USER = WARM_UP_USER - 1
PROBE_REQUESTS = 21


def smallest_request(user: int) -> list[grpcclient.InferInput]:
    """`user`'s one-event history ranked against one candidate: what warm-up and probe send."""
    return infer_inputs(grpcclient, schema.ensemble_request(user, np.array([1]), np.array([0]), np.array([1])))


@dataclass(frozen=True)
class ClusterConfig:
    """One benchmarked system: nodes, their pool and alpha controller, the router policy.

    `alpha` is "adaptive" (the three-layer controller retunes it online) or a
    static EMB share in [0, 1]. `pool_bytes` is each node's own budget.
    """

    nodes: int = 2
    policy: str = "helm"
    alpha: str = ADAPTIVE
    pool_bytes: int = 1 << 20
    device: str = "auto"
    preset: str = "tiny"
    seed: int = 0
    threads_per_node: int = 1  # torch/OpenMP threads of each node's network
    startup_timeout_s: float = 300.0
    page_bytes: int | None = None  # None: the repository's page size
    warmup_shapes: str = ""  # hstu_pool's HISTORYxCANDIDATES graphs captured at load (GPU nodes)
    router_workers: int = 1  # `helmrec route --workers`
    data_plane: str = "python"  # `helmrec route --data-plane`
    num_items: int | None = None  # None: the preset's item table; else its rows (the host table's size)
    device_memory_bytes: int = 0  # hstu_pool's cap on each node's GPU memory; 0: none

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"ClusterConfig.nodes must be >= 1, got {self.nodes}")
        if self.policy not in POLICIES:
            raise ValueError(f"ClusterConfig.policy must be one of {POLICIES}, got {self.policy!r}")
        if self.alpha != ADAPTIVE:
            try:
                value = float(self.alpha)
            except ValueError:
                raise ValueError(f"ClusterConfig.alpha must be 'adaptive' or a number in [0, 1], got {self.alpha!r}") from None
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ClusterConfig.alpha must be in [0, 1], got {value}")
        if self.pool_bytes < 1:
            raise ValueError(f"ClusterConfig.pool_bytes must be >= 1, got {self.pool_bytes}")
        if self.threads_per_node < 1:
            raise ValueError(f"ClusterConfig.threads_per_node must be >= 1, got {self.threads_per_node}")
        if self.router_workers < 1:
            raise ValueError(f"ClusterConfig.router_workers must be >= 1, got {self.router_workers}")
        if self.device_memory_bytes < 0:
            raise ValueError(f"ClusterConfig.device_memory_bytes must be >= 0, got {self.device_memory_bytes}")
        if self.num_items is not None and self.num_items < 1:
            raise ValueError(f"ClusterConfig.num_items must be >= 1, got {self.num_items}")
        if self.data_plane not in DATA_PLANES:
            raise ValueError(f"ClusterConfig.data_plane must be one of {DATA_PLANES}, got {self.data_plane!r}")

    @property
    def adaptive(self) -> bool:
        return self.alpha == ADAPTIVE

    @property
    def label(self) -> str:
        """Short name of the system in tables: `adaptive+helm`, `static 0.25+round_robin`."""
        return f"{'adaptive' if self.adaptive else f'static {float(self.alpha):g}'}+{self.policy}"

    def pool_parameters(self) -> dict[str, str]:
        """hstu_pool parameters of every node; an adaptive node starts from the repository's alpha."""
        params = {"controller": ADAPTIVE if self.adaptive else "static", "pool_bytes": str(self.pool_bytes)}
        if not self.adaptive:
            params["alpha"] = str(float(self.alpha))
        if self.page_bytes is not None:
            params["page_bytes"] = str(self.page_bytes)
        if self.warmup_shapes:
            params["warmup_shapes"] = self.warmup_shapes
        if self.device_memory_bytes:
            params["device_memory_bytes"] = str(self.device_memory_bytes)
        return params


@dataclass
class Cluster:
    """Context manager: stage the repository, start the nodes and the router; always stop them all."""

    config: ClusterConfig
    work_dir: Path
    servers: list[TritonServer] = field(default_factory=list, init=False)
    router_grpc_url: str = field(default="", init=False)
    limits: Limits | None = field(default=None, init=False)
    control_interval_s: float = field(default=0.0, init=False)  # how often the nodes publish metrics
    _router: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def metrics_urls(self) -> list[str]:
        return [s.metrics_url for s in self.servers]

    def start(self) -> Cluster:
        repo = stage_repository(
            self.work_dir / "model_repository",
            self.config.preset,
            self.config.seed,
            pool_parameters=self.config.pool_parameters(),
            num_items=self.config.num_items,
        )
        self.limits = read_limits(repo / WEIGHTS)
        self.control_interval_s = control_window_s(repo)
        try:
            with ThreadPoolExecutor(self.config.nodes) as pool:
                # Consumed in full: every node is started (or failed) before an error propagates.
                outcomes = [pool.submit(self._start_node, repo) for _ in range(self.config.nodes)]
            for outcome in outcomes:
                outcome.result()
            self._start_with_port_retry(self._start_router)
            self._warm_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, repo: Path) -> None:
        """Start one node and add it to `servers` (list.append is atomic: nodes start in parallel)."""
        threads = str(self.config.threads_per_node)

        def start() -> TritonServer:
            return TritonServer(
                model_repository=repo,
                device=self.config.device,
                startup_timeout_s=self.config.startup_timeout_s,
                extra_env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
            ).start()

        self.servers.append(self._start_with_port_retry(start))

    @staticmethod
    def _start_with_port_retry(start: Callable[[], T]) -> T:
        """Run `start`, again on fresh ports when a port it was handed got taken before it bound it.

        Free ports are picked, released and only then bound by the child process; on a machine
        where other servers start at the same time, another process can bind one in between.
        """
        for attempt in range(PORT_ATTEMPTS):
            try:
                return start()
            except LauncherError as exc:
                taken = any(sign in str(exc) for sign in PORT_TAKEN)
                if not taken or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _start_router(self) -> None:
        port = free_port()
        command = [sys.executable, "-m", "helmrec.cli", "route", "--policy", self.config.policy,
                   "--grpc-port", str(port), "--http-port", "-1", "--workers", str(self.config.router_workers),
                   "--data-plane", self.config.data_plane]  # fmt: skip
        for s in self.servers:
            command += ["--backend", f"127.0.0.1:{s.grpc_port},metrics={s.metrics_port}"]
        log = (self.work_dir / "router.log").open("wb")
        self._router = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        log.close()
        self.router_grpc_url = f"127.0.0.1:{port}"
        # Ready means the router said so: a gRPC probe of the port could be answered by another
        # process that bound it first.
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            if self._router.poll() is not None:
                code, self._router = self._router.returncode, None
                raise LauncherError(f"helmrec route exited with code {code}:\n{self.router_log()}")
            if len(ROUTER_READY.findall(self.router_log())) >= self.config.router_workers:
                return
            time.sleep(0.2)
        raise LauncherError(f"helmrec route not ready after 60 s:\n{self.router_log()}")

    def router_log(self) -> str:
        path = self.work_dir / "router.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _warm_up(self) -> None:
        """One request per node, straight to it, so one-time start-up costs are not timed."""
        for node, server in enumerate(self.servers):
            client = grpcclient.InferenceServerClient(server.grpc_url)
            client.infer(schema.ENSEMBLE_MODEL, smallest_request(WARM_UP_USER + node))

    def probe(self, requests: int = PROBE_REQUESTS) -> list[float]:
        """Milliseconds of `requests - 1` requests of the smallest kind (a KV hit of a one-event
        history, one candidate) sent one at a time through the router, after one that seeds the
        user's KV entry: what the served path (gRPC, router, ensemble, the stub's hops) costs
        where the network does almost nothing and nothing queues."""
        client = grpcclient.InferenceServerClient(self.router_grpc_url)
        inputs = smallest_request(PROBE_USER)
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            client.infer(schema.ENSEMBLE_MODEL, inputs)
            times.append((time.perf_counter() - t0) * 1e3)
        return times[1:]

    def stop(self) -> None:
        if self._router is not None:
            proc, self._router = self._router, None
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
