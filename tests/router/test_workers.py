"""`helmrec route --workers 2` in front of two real tritonservers.

Stock tritonclient apps (gRPC and HTTP), each request on a fresh connection so
the kernel deals connections over both workers, get answers; every request of a
user lands on the same backend (counted by the backends' own statistics)
whichever worker took the connection; statistics through the router are the
backends' summed; SIGTERM stops the whole router cleanly;
a worker that dies takes the router down with an exit status naming it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helmrec.launcher import TritonServer, free_port
from helmrec.load.client import infer_inputs
from helmrec.router.rendezvous import home_order
from tests.conftest import cpu_servers
from tests.router.test_e2e import MODEL, user_request

pytestmark = pytest.mark.e2e
WORKERS = 2
# A channel of its own (no subchannel shared with the process's other channels): a new TCP connection.
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def servers(tiny_repository: Path) -> Iterator[list[TritonServer]]:
    with cpu_servers(tiny_repository, 2) as started:
        yield started


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now (worker k's metrics: base + k)."""
    while True:
        base = free_port()
        sockets = []
        try:
            for k in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


class Router:
    """A `helmrec route --workers 2` process and the ports and pids it announced."""

    def __init__(self, servers: list[TritonServer]) -> None:
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), consecutive_free_ports(WORKERS)
        self.backends = [f"127.0.0.1:{s.grpc_port}" for s in servers]
        specs = [f"--backend=127.0.0.1:{s.grpc_port},http={s.http_port},metrics={s.metrics_port}" for s in servers]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helmrec.cli", "route", *specs, f"--workers={WORKERS}", "--policy=helm",
             f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}", f"--metrics-port={self.metrics_port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        banners = []
        while len(banners) < WORKERS:
            line = self.proc.stdout.readline()
            assert line, f"router exited before {WORKERS} workers were ready: {banners}"
            if " ready " in line:
                banners.append(line)
        assert all("2/2 backends healthy" in b for b in banners), banners
        found = [re.search(r"router worker (\d+) ready \(pid (\d+)", b) for b in banners]
        pids = {int(m.group(1)): int(m.group(2)) for m in found if m is not None}
        assert sorted(pids) == list(range(WORKERS)), banners
        self.worker_pids = [pids[k] for k in range(WORKERS)]  # banners come in any order

    def worker_requests(self, k: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port + k}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return float(re.search(r"^helmrec_router_requests_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    def output(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read()


def successes(server: TritonServer) -> int:
    stats = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}").get_inference_statistics(MODEL)
    return sum(int(m.inference_stats.success.count) for m in stats.model_stats)


def test_workers_share_the_port_and_send_each_user_to_its_home(servers: list[TritonServer]) -> None:
    router = Router(servers)
    try:
        for user in range(12):
            before = [successes(s) for s in servers]
            for length in (4, 5, 6):
                client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}", channel_args=FRESH_CONNECTION)
                scores = client.infer(MODEL, infer_inputs(grpcclient, user_request(user, length)))
                assert scores.as_numpy("SCORES").shape == (16, 2)
                client.close()
                http = httpclient.InferenceServerClient(f"127.0.0.1:{router.http_port}")
                answer = http.infer(MODEL, infer_inputs(httpclient, user_request(user, length + 1)))
                assert answer.as_numpy("SCORES").shape == (16, 2)
                http.close()
            gained = [successes(s) - b for s, b in zip(servers, before)]
            home = home_order(user, router.backends)[0]
            assert gained[home] == 6 and gained[1 - home] == 0, (user, gained)
        # Statistics through the router are the cluster's: each backend's, summed (whichever worker answers).
        through = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}").get_inference_statistics(MODEL)
        assert int(through.model_stats[0].inference_stats.success.count) == sum(successes(s) for s in servers) >= 72
        per_worker = [router.worker_requests(k) for k in range(WORKERS)]
        print(f"\nrequests per worker: {per_worker}")
        assert sum(per_worker) == 12 * 6 and min(per_worker) > 0, per_worker  # both workers took connections
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(30) == 0, router.output()
        for pid in router.worker_pids:  # the parent joined them before it exited
            assert not os.path.exists(f"/proc/{pid}"), f"worker pid {pid} outlived the router"
    finally:
        if router.proc.poll() is None:
            router.proc.kill()
            router.proc.wait(30)


def test_a_dead_worker_stops_the_router_and_is_named(servers: list[TritonServer]) -> None:
    router = Router(servers)
    try:
        os.kill(router.worker_pids[1], signal.SIGKILL)
        assert router.proc.wait(30) == 1
        assert f"helmrec-route-worker-1 (pid {router.worker_pids[1]}) exited with code -9" in router.output()
        for pid in router.worker_pids:
            assert not os.path.exists(f"/proc/{pid}"), f"worker pid {pid} outlived the router"
    finally:
        if router.proc.poll() is None:
            router.proc.kill()
            router.proc.wait(30)
