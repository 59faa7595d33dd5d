"""`helmrec route --workers 2` in front of two real tritonservers.

Stock tritonclient apps (gRPC and HTTP), each request on a fresh connection so
the kernel deals connections over both workers, get answers; every request of a
user lands on the same backend (counted by the backends' own statistics)
whichever worker took the connection; statistics through the router are the
backends' summed; SIGTERM stops the whole router cleanly;
a worker that dies takes the router down with an exit status naming it.
`--data-plane native` (one process and its hop): the same homes, the same
summed metrics, and the hop and the router stop together.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helmrec.launcher import TritonServer, free_port
from helmrec.load.client import infer_inputs
from helmrec.router.rendezvous import home_order
from tests.conftest import cpu_servers
from tests.router.planes import needs_hop
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
    """A `helmrec route --workers 2` process and the ports and pids it announced.

    Its output is read by a thread into `lines` (the workers' logs included), so
    the pipe never fills while a test runs.
    """

    def __init__(self, servers: list[TritonServer], *backend_args: str, healthy: int = 2) -> None:
        # The parent sums every worker's metrics on metrics_port; worker k serves its own on metrics_port + 1 + k.
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), consecutive_free_ports(WORKERS + 1)
        self.backends = [f"127.0.0.1:{s.grpc_port}" for s in servers]
        specs = backend_args or [
            f"--backend=127.0.0.1:{s.grpc_port},http={s.http_port},metrics={s.metrics_port}" for s in servers
        ]
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
        assert all(f"{healthy}/{healthy} backends healthy" in b for b in banners), banners
        found = [re.search(r"router worker (\d+) ready \(pid (\d+)", b) for b in banners]
        pids = {int(m.group(1)): int(m.group(2)) for m in found if m is not None}
        assert sorted(pids) == list(range(WORKERS)), banners
        self.worker_pids = [pids[k] for k in range(WORKERS)]  # banners come in any order
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def metric(self, name: str, port: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    def worker_requests(self, k: int) -> float:
        return self.metric("helmrec_router_requests_total", self.metrics_port + 1 + k)

    def output(self) -> str:
        self.proc.wait(30)
        self._reader.join(10)
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def successes(server: TritonServer) -> int:
    stats = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}").get_inference_statistics(MODEL)
    return sum(int(m.inference_stats.success.count) for m in stats.model_stats)


def gained(servers: list[TritonServer], before: list[int], total: int) -> list[int]:
    """What each server's success count gained since `before`, once `total` answered requests
    show in them: Triton counts a request when it releases it, which may come just after the
    client has its answer (seen on a busy 2-core machine). Gives up after 5 s and returns what it has."""
    deadline = time.monotonic() + 5.0
    while True:
        now = [successes(s) - b for s, b in zip(servers, before)]
        if sum(now) >= total or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


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
            got = gained(servers, before, 6)
            home = home_order(user, router.backends)[0]
            assert got[home] == 6 and got[1 - home] == 0, (user, got)
        # Statistics through the router are the cluster's: each backend's, summed (whichever worker answers).
        through = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}").get_inference_statistics(MODEL)
        assert int(through.model_stats[0].inference_stats.success.count) == sum(successes(s) for s in servers) >= 72
        per_worker = [router.worker_requests(k) for k in range(WORKERS)]
        print(f"\nrequests per worker: {per_worker}")
        assert sum(per_worker) == 12 * 6 and min(per_worker) > 0, per_worker  # both workers took connections
        http_stats = httpclient.InferenceServerClient(f"127.0.0.1:{router.http_port}").get_inference_statistics(MODEL)
        assert http_stats["model_stats"][0]["inference_stats"]["success"]["count"] == sum(successes(s) for s in servers)
        # One scrape of --metrics-port: the router's figures summed over its workers.
        assert router.metric("helmrec_router_requests_total", router.metrics_port) == 12 * 6
        assert router.metric("helmrec_router_answered_total", router.metrics_port) == 12 * 6
        assert router.metric("helmrec_router_workers_scraped", router.metrics_port) == WORKERS
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(30) == 0, router.output()
        for pid in router.worker_pids:  # the parent joined them before it exited
            assert not os.path.exists(f"/proc/{pid}"), f"worker pid {pid} outlived the router"
    finally:
        router.stop()


def test_a_dead_worker_stops_the_router_and_is_named(servers: list[TritonServer]) -> None:
    router = Router(servers)
    try:
        os.kill(router.worker_pids[1], signal.SIGKILL)
        assert router.proc.wait(30) == 1
        assert f"helmrec-route-worker-1 (pid {router.worker_pids[1]}) exited with code -9" in router.output()
        for pid in router.worker_pids:
            assert not os.path.exists(f"/proc/{pid}"), f"worker pid {pid} outlived the router"
    finally:
        router.stop()


def backend_healthy(port: int, target: str) -> float | None:
    """A worker's `helmrec_router_backend_healthy` for one backend; None when it does not list it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf'^helmrec_router_backend_healthy{{backend="{re.escape(target)}"}} (\S+)$', text, re.M)
    return None if found is None else float(found.group(1))


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_the_backend_file_adds_and_removes_backends_without_a_restart(servers: list[TritonServer], tmp_path: Path) -> None:
    path = tmp_path / "backends"
    specs = [f"127.0.0.1:{s.grpc_port},http={s.http_port},metrics={s.metrics_port}" for s in servers]
    targets = [f"127.0.0.1:{s.grpc_port}" for s in servers]
    path.write_text(f"# the cluster\n{specs[0]}\n")
    router = Router(servers, f"--backend-file={path}", "--backend-file-interval=0.3", healthy=1)
    worker_ports = [router.metrics_port + 1 + k for k in range(WORKERS)]

    def send(users: range) -> list[int]:
        """Requests of `users` on fresh connections (dealt over both workers); what each backend gained."""
        before = [successes(s) for s in servers]
        for user in users:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}", channel_args=FRESH_CONNECTION)
            client.infer(MODEL, infer_inputs(grpcclient, user_request(user, 5)))
            client.close()
        return gained(servers, before, len(users))

    try:
        assert send(range(8)) == [8, 0]  # only backend 0 is listed
        # Added: probed, then in rotation in every worker; the users whose home it is go there.
        path.write_text(f"# the cluster\n{specs[0]}\n{specs[1]}  # added\n")
        wait_until(lambda: all(backend_healthy(p, targets[1]) == 1 for p in worker_ports), "both workers use backend 1")
        homes = [home_order(user, targets)[0] for user in range(100, 112)]
        assert send(range(100, 112)) == [homes.count(0), homes.count(1)] and homes.count(1) > 0
        # Removed under load: what it has in flight is answered, then it gets nothing.
        errors: list[str] = []
        answered = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal answered
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}")
            user = 200
            while not stop.is_set():
                try:
                    client.infer(MODEL, infer_inputs(grpcclient, user_request(user, 5)))
                    answered += 1
                except InferenceServerException as exc:
                    errors.append(str(exc))
                user += 1

        loader = threading.Thread(target=load)
        loader.start()
        try:
            time.sleep(0.5)
            path.write_text(f"{specs[1]}\n")
            wait_until(lambda: all(backend_healthy(p, targets[0]) is None for p in worker_ports), "backend 0 drained")
            time.sleep(0.3)
        finally:
            stop.set()
            loader.join(30)
        print(f"\nremoved backend 0 under load: {answered} answered, {len(errors)} errors")
        assert not errors and answered > 0, errors[:3]
        assert send(range(300, 308)) == [0, 8]
        # A bad edit changes nothing and names its line; SIGHUP (to the parent) re-reads the file in every worker.
        path.write_text(f"{specs[1]}\n127.0.0.1\n")
        bad = f"--backend-file {path}:2: --backend '127.0.0.1': expected HOST:GRPC_PORT"
        wait_until(lambda: sum(bad in line for line in router.lines) == WORKERS, "each worker logs the bad line")
        assert send(range(400, 404)) == [0, 4]
        router.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sum(bad in line for line in router.lines) == 2 * WORKERS, "SIGHUP re-reads it")
        assert router.proc.poll() is None and send(range(500, 504)) == [0, 4]
    finally:
        router.stop()


def test_killing_a_backend_then_a_worker_under_load_answers_or_refuses_every_request(
    servers: list[TritonServer],
) -> None:
    """Runs last: it kills backend 1. Every request gets an answer or an explicit error, none hangs.

    A backend SIGKILLed mid-request costs nothing (the router sends the request
    once to the other backend). A worker SIGKILLed takes the router down by
    design (the service manager restarts it): requests on the dead worker's
    connections fail UNAVAILABLE, the parent SIGTERMs the surviving worker,
    which answers what it has in flight within its grace period and refuses
    the rest UNAVAILABLE, as does the closed port after.
    """
    router = Router(servers)
    outcomes: list[tuple[str, str]] = []  # (phase, "ok" or the status code)
    messages: list[str] = []
    phase = ["steady"]
    stop = threading.Event()

    def client_loop(w: int) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}", channel_args=FRESH_CONNECTION)
        user = 10_000 * (w + 1)
        while not stop.is_set():
            try:
                client.infer(MODEL, infer_inputs(grpcclient, user_request(user, 5)), client_timeout=20)
                outcomes.append((phase[0], "ok"))
            except InferenceServerException as exc:
                current = phase[0]  # when it came back: one sent before a worker died fails with it
                outcomes.append((current, str(exc.status())))
                messages.append(f"{current}: {exc}")
                client.close()  # a new connection, maybe to another worker (or refused once the router is gone)
                client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}", channel_args=FRESH_CONNECTION)
                time.sleep(0.05)
            user += 1
        client.close()

    def answered(p: str) -> int:
        return sum(1 for ph, o in outcomes if ph == p and o == "ok")

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: answered("steady") >= 20, "20 answers")
        phase[0] = "backend killed"
        os.kill(servers[1].pid, signal.SIGKILL)
        wait_until(lambda: answered("backend killed") >= 40, "40 answers after the backend died")
        phase[0] = "worker killed"
        os.kill(router.worker_pids[1], signal.SIGKILL)
        assert router.proc.wait(30) == 1
        time.sleep(0.5)  # clients meet the closed port too
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        router.stop()
    assert not any(t.is_alive() for t in threads), "a request hung"
    counts: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"\n{len(outcomes)} requests, each answered or refused: {counts}")
    assert all(o == "ok" for ph, o in outcomes if ph != "worker killed"), messages[:3]  # the backend's death cost nothing
    assert {o for _, o in outcomes} <= {"ok", "StatusCode.UNAVAILABLE"}, counts  # explicit, never a deadline


# -- the native data plane: one `helmrec route --data-plane native` process and its hop -----------
@pytest.fixture(scope="module")
def fresh_servers(tiny_repository: Path) -> Iterator[list[TritonServer]]:
    """Two servers of their own: a test above kills one of `servers`."""
    with cpu_servers(tiny_repository, 2) as started:
        yield started


def _native_router(servers: list[TritonServer]) -> tuple[subprocess.Popen[str], int, int, int]:
    """(the router process, its gRPC, HTTP and metrics ports), once it announced it is ready."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    specs = [f"--backend=127.0.0.1:{s.grpc_port},http={s.http_port},metrics={s.metrics_port}" for s in servers]
    proc = subprocess.Popen(
        [sys.executable, "-m", "helmrec.cli", "route", *specs, "--data-plane=native", "--policy=helm",
         f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    while lines[-1] and "ready (pid" not in lines[-1]:  # log lines (a backend not yet ready) may come first
        lines.append(proc.stdout.readline())
    if "native data plane" not in lines[-1]:
        proc.kill()  # so that reading the rest of its output ends
        raise AssertionError("".join(lines) + proc.stdout.read())
    # The banner counts the backends healthy at start; a probe may not have answered yet.
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        if len(re.findall(r"^helmrec_router_backend_healthy\{.*\} 1\.0$", text, re.M)) == len(servers):
            return proc, grpc_port, http_port, metrics_port
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"not every backend healthy after 30 s:\n{text}")
        time.sleep(0.1)


def _hop_pid(router_pid: int) -> int:
    children = Path(f"/proc/{router_pid}/task/{router_pid}/children").read_text().split()
    assert len(children) == 1, children
    assert Path(f"/proc/{children[0]}/comm").read_text().strip() == "helmrec-hop"
    return int(children[0])


@needs_hop
def test_native_hop_sends_each_user_to_the_same_home_as_the_python_router(fresh_servers: list[TritonServer]) -> None:
    """gRPC through the hop and HTTP through the Python router: one home per user, rendezvous's."""
    servers = fresh_servers
    proc, grpc_port, http_port, metrics_port = _native_router(servers)
    backends = [f"127.0.0.1:{s.grpc_port}" for s in servers]
    try:
        for user in range(12):
            before = [successes(s) for s in servers]
            for length in (4, 5, 6):
                client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}", channel_args=FRESH_CONNECTION)
                scores = client.infer(MODEL, infer_inputs(grpcclient, user_request(user, length)))
                assert scores.as_numpy("SCORES").shape == (16, 2)
                client.close()
                http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
                answer = http.infer(MODEL, infer_inputs(httpclient, user_request(user, length + 1)))
                assert answer.as_numpy("SCORES").shape == (16, 2)
                http.close()
            got = gained(servers, before, 6)
            home = home_order(user, backends)[0]
            assert got[home] == 6 and got[1 - home] == 0, (user, got)
        time.sleep(1.2)  # the hop reports its counters every 0.5 s
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        # The router's own metrics count both planes' requests: 36 through the hop, 36 over HTTP.
        assert re.search(r"^helmrec_router_requests_total 72\.0$", text, re.M), text
        assert re.search(r"^helmrec_router_answered_total 72\.0$", text, re.M), text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@needs_hop
def test_native_hop_and_router_stop_together(fresh_servers: list[TritonServer]) -> None:
    """A dead hop stops the router (exit 1, named); a SIGKILLed router leaves no hop behind."""
    proc, *_ = _native_router(fresh_servers)
    try:
        hop = _hop_pid(proc.pid)
        os.kill(hop, signal.SIGKILL)
        assert proc.wait(30) == 1
        assert proc.stdout is not None
        assert "the native hop exited" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    proc, grpc_port, *_ = _native_router(fresh_servers)
    hop = _hop_pid(proc.pid)
    proc.kill()  # no cleanup runs: the hop sees its stdin close
    proc.wait(30)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{hop}") and Path(f"/proc/{hop}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, f"hop pid {hop} outlived its router"
        time.sleep(0.1)
