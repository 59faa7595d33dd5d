"""What the router costs: its ceiling by worker count and its added latency at load; or the hop over real servers.

    helmrec bench-router [--workers 1,2,4,8] [--fractions 0.1,0.5,0.9] [--seconds 5]
                         [--standins K] [--loadgens P] [--concurrency 64]
    helmrec bench-router --tritonservers [--requests 300] [--concurrency 16] [--seconds 10]

Cluster rates (default): K stand-in backends (`standin_backend.py`: Triton's
gRPC service answering fixed bytes, so the backends outrun the router; a CPU
tritonserver answers ~1,000 req/s here and would be what is measured) and P
load-generator processes sending pre-serialized ModelInfer requests over 16
connections each (SO_REUSEPORT deals connections, not requests, to workers).
For each worker count: `helmrec route --workers N` is started, its ceiling is
the closed-loop throughput with P x concurrency requests in flight, with the
workers' CPU per request; then for each fraction f, open-loop Poisson arrivals
at f x ceiling go straight to the stand-ins and through the router, one after
the other in the same run, and the P50/P99 difference is the added latency.
`--router-python-path` runs another checkout's router (a before/after in one run).

`--tritonservers`: three tritonservers (tiny preset, CPU) and one router, all
on this machine: latency of one client alternating between a backend directly
and a router in front of it alone (twin user ids), throughput straight vs
through the router, the router's CPU per request, and the routing decision
alone in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from rich.console import Console
from rich.table import Table
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype

from helmrec import schema
from helmrec.launcher import TritonServer, free_port
from helmrec.launcher.repository import stage_repository
from helmrec.load.client import infer_inputs
from helmrec.router.config import POLICIES
from helmrec.router.policies import make_policy
from helmrec.router.state import BackendState, RouteRequest

MODEL = schema.ENSEMBLE_MODEL


def make_requests(
    n: int, users: int, history: int, candidates: int, num_items: int, seed: int, user_offset: int = 0
) -> list[list]:
    """Repeat users (Zipf) with fixed per-user histories, as tritonclient inputs."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, users + 1) ** 0.8
    who = rng.choice(users, size=n, p=p / p.sum())
    out = []
    for user in who.tolist():
        pos = np.arange(history, dtype=np.int64)
        arrays = schema.ensemble_request(
            user + user_offset,
            1 + (user * 7919 + pos * 104729) % (num_items - 1),
            1_700_000_000 + pos * 60,
            rng.integers(1, num_items, candidates),
            (user + pos) % 2,
        )
        out.append(infer_inputs(grpcclient, arrays))
    return out


def start_router(servers: list[TritonServer], policy: str) -> tuple[subprocess.Popen[str], str]:
    """`helmrec route` in its own process (its CPU time is then its own), ready to serve."""
    port = free_port()
    specs = [f"--backend=127.0.0.1:{s.grpc_port},metrics={s.metrics_port}" for s in servers]
    proc = subprocess.Popen(
        [sys.executable, "-m", "helmrec.cli", "route", *specs, f"--grpc-port={port}", "--http-port=-1",
         f"--policy={policy}", "--max-in-flight=256"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    if "router ready" not in banner:
        proc.kill()
        raise RuntimeError(f"router did not start: {banner}{proc.stdout.read()}")
    return proc, f"127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(direct: str, routed: str, plain: list[list], twins: list[list], warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-request latency straight to one backend and through a router to it, taking turns."""
    paths = (
        (grpcclient.InferenceServerClient(direct), plain, []),
        (grpcclient.InferenceServerClient(routed), twins, []),
    )
    for i in range(len(plain)):
        for client, requests, sink in paths if i % 2 == 0 else paths[::-1]:
            t0 = time.perf_counter()
            client.infer(MODEL, requests[i])
            if i >= warmup:
                sink.append(time.perf_counter() - t0)
    return np.array(paths[0][2]) * 1e3, np.array(paths[1][2]) * 1e3


async def throughput(urls: list[str], requests: list[list], seconds: float, concurrency: int) -> int:
    """Requests answered in `seconds` with `concurrency` in flight, spread over `urls` in turn."""
    clients = [grpcaio.InferenceServerClient(u) for u in urls]
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.monotonic() < stop_at:
            await clients[i % len(clients)].infer(MODEL, requests[i % len(requests)])
            done += 1
            i += concurrency
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return done


async def forward_only(url: str, calls: int, concurrency: int) -> None:
    """ServerReady through the router: forwarding with no parsing or policy (gRPC's own floor)."""
    client = grpcaio.InferenceServerClient(url)

    async def worker(w: int) -> None:
        for _ in range(w, calls, concurrency):
            await client.is_server_ready()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        await client.close()


def decision_cost_us(policy: str, nodes: int, candidates: int, n: int = 20_000) -> float:
    """Per request: build the RouteRequest, choose, record the placement (what the router does)."""
    rng = np.random.default_rng(0)
    backends = [BackendState(name=f"b{i}", max_in_flight=1 << 30) for i in range(nodes)]
    chooser = make_policy(policy)
    users = rng.integers(0, 5_000, n).tolist()
    items = [rng.integers(0, 100_000, candidates) for _ in range(1000)]
    for i in range(1000):  # warm the records and sketches
        r = RouteRequest(user_id=users[i], history_len=64, candidates=items[i])
        backends[chooser.choose(r, backends)].note(r)
    t0 = time.perf_counter()
    for i in range(n):
        r = RouteRequest(user_id=users[i], history_len=64, candidates=items[i % 1000])
        backends[chooser.choose(r, backends)].note(r)
    return (time.perf_counter() - t0) / n * 1e6


def real_backends(args: argparse.Namespace, console: Console) -> None:
    """The hop over real tritonservers: idle added latency and CPU per request (the model bounds throughput)."""

    with tempfile.TemporaryDirectory() as tmp:
        repo = stage_repository(Path(tmp) / "model_repository", "tiny", 0)
        servers = [TritonServer(model_repository=repo, device="cpu", extra_env={"OMP_NUM_THREADS": "1"}) for _ in range(3)]
        try:
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda s: s.start(), servers))
            n = args.requests + args.warmup
            requests = make_requests(n, 200, args.history, args.candidates, 300, 0)
            twins = make_requests(n, 200, args.history, args.candidates, 300, 0, user_offset=1_000_000)
            single, single_url = start_router(servers[:1], args.policy)
            try:
                lat_direct, lat_router = latency(servers[0].grpc_url, single_url, requests, twins, args.warmup)
            finally:
                single.send_signal(signal.SIGINT)
                single.wait(30)
            proc, routed = start_router(servers, args.policy)
            try:
                # Fresh users for each side, so neither finds the other's KV warm.
                load_direct = make_requests(1000, 200, args.history, args.candidates, 300, 1, user_offset=2_000_000)
                load_routed = make_requests(1000, 200, args.history, args.candidates, 300, 1, user_offset=3_000_000)
                direct_urls = [s.grpc_url for s in servers]
                rps_direct = asyncio.run(throughput(direct_urls, load_direct, args.seconds, args.concurrency)) / args.seconds
                # The router's background work (probes, scrapes) is not per-request cost: measure it idle.
                idle0 = cpu_seconds(proc.pid)
                time.sleep(3.0)
                idle_rate = (cpu_seconds(proc.pid) - idle0) / 3.0
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                answered = asyncio.run(throughput([routed], load_routed, args.seconds, args.concurrency))
                busy = cpu_seconds(proc.pid) - cpu0 - idle_rate * (time.monotonic() - t0)
                router_cpu_per_req = busy / max(answered, 1)
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                asyncio.run(forward_only(routed, 3000, args.concurrency))
                floor = (cpu_seconds(proc.pid) - cpu0 - idle_rate * (time.monotonic() - t0)) / 3000
                rps_router = answered / args.seconds
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
        finally:
            for s in servers:
                s.stop()

    table = Table(title=f"router on this machine ({os.cpu_count()} cores): 3 tritonservers (tiny, CPU), "
                  f"history {args.history}, {args.candidates} candidates, policy {args.policy}")
    for col in ("measure", "direct", "via router", "added"):
        table.add_column(col)
    p50d, p99d = np.percentile(lat_direct, 50), np.percentile(lat_direct, 99)
    p50r, p99r = np.percentile(lat_router, 50), np.percentile(lat_router, 99)
    table.add_row(f"P50 latency ms, 1 backend ({args.requests} req)", f"{p50d:.3f}", f"{p50r:.3f}", f"{p50r - p50d:+.3f}")
    table.add_row("P99 latency ms", f"{p99d:.3f}", f"{p99r:.3f}", f"{p99r - p99d:+.3f}")
    table.add_row(f"throughput req/s, 3 backends ({args.concurrency} in flight, {args.seconds:.0f} s)", f"{rps_direct:.0f}",
                  f"{rps_router:.0f}", f"{rps_router / rps_direct:.2f}x")
    table.add_row("router CPU per request us (idle work subtracted)", "", f"{router_cpu_per_req * 1e6:.0f}", "")
    table.add_row("router CPU per forwarded ServerReady us (gRPC floor)", "", f"{floor * 1e6:.0f}", "")
    console.print(table)

    cost = Table(title="routing decision alone (RouteRequest + policy.choose + record), in-process")
    for col in ("policy", "3 nodes us", "32 nodes us"):
        cost.add_column(col)
    for name in POLICIES:
        cost.add_row(name, *(f"{decision_cost_us(name, n, args.candidates):.1f}" for n in (3, 32)))
    console.print(cost)
    ceiling = 1.0 / router_cpu_per_req if router_cpu_per_req > 0 else float("inf")
    console.print(
        f"router adds {p50r - p50d:+.3f} ms at P50 and {p99r - p99d:+.3f} ms at P99; "
        f"its ceiling is ~{ceiling:.0f} req/s per core ({router_cpu_per_req * 1e6:.0f} us CPU per request)"
    )


# -- the router at cluster rates: stand-in backends, 1..N workers ---------------------
STANDIN_CONNECTIONS = 16  # per load-generator process: SO_REUSEPORT deals connections, not requests
INFER = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(arrays: dict[str, np.ndarray], model: str = MODEL) -> bytes:
    """A serialized ModelInferRequest (raw tensors), as tritonclient sends it."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, value in arrays.items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(value.dtype), shape=list(value.shape))
        request.raw_input_contents.append(np.ascontiguousarray(value).tobytes())
    return request.SerializeToString()


def payloads(n: int, history: int, candidates: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for user in rng.integers(0, 1_000_000, n).tolist():
        pos = np.arange(history, dtype=np.int64)
        arrays = schema.ensemble_request(
            user, 1 + (user + pos * 104729) % 299, 1_700_000_000 + pos * 60,
            rng.integers(1, 300, candidates), (user + pos) % 2,
        )
        out.append(request_bytes(arrays))
    return out


async def _drive(urls: list[str], bodies: list[bytes], seconds: float, concurrency: int, rate: float,
                 start_at: float) -> tuple[int, int, list[float]]:
    """Closed loop (`concurrency` in flight) when rate is 0, else Poisson arrivals at `rate`/s.

    Open-loop latency runs from each request's scheduled time, so a stall is
    charged to every request it delays (no coordinated omission).
    """
    options = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own TCP connection
    channels = [grpc.aio.insecure_channel(urls[i % len(urls)], options=options) for i in range(STANDIN_CONNECTIONS)]
    calls = [ch.unary_unary(INFER) for ch in channels]
    answered = errors = 0
    latencies: list[float] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop_at = time.perf_counter() + seconds

    async def one(i: int, scheduled: float) -> None:
        nonlocal answered, errors
        try:
            await calls[i % len(calls)](bodies[i % len(bodies)], timeout=10)
            answered += 1
            latencies.append(time.perf_counter() - scheduled)
        except grpc.aio.AioRpcError:
            errors += 1

    if rate <= 0:
        async def loop(w: int) -> None:
            i = w
            while time.perf_counter() < stop_at:
                await one(i, time.perf_counter())
                i += concurrency
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
    else:
        rng = np.random.default_rng()
        tasks = []
        at, i = time.perf_counter(), 0
        while at < stop_at:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i, at)))
            i += 1
            at += rng.exponential(1.0 / rate)
        await asyncio.gather(*tasks)
    await asyncio.gather(*(ch.close() for ch in channels))
    return answered, errors, latencies


def drive(urls: list[str], bodies: list[bytes], seconds: float, concurrency: int, rate: float,
          start_at: float) -> tuple[int, int, list[float]]:
    """One load-generator process's share (run in a spawned pool)."""
    return asyncio.run(_drive(urls, bodies, seconds, concurrency, rate, start_at))


class LoadGenerators:
    """`count` processes that send pre-serialized requests together and pool what they saw."""

    def __init__(self, count: int, bodies: list[bytes]) -> None:
        self.count = count
        self.bodies = bodies
        self.pool = multiprocessing.get_context("spawn").Pool(count)

    def run(self, urls: list[str], seconds: float, concurrency: int = 0, rate: float = 0.0) -> tuple[int, int, np.ndarray]:
        start_at = time.time() + 0.3
        jobs = [(urls, self.bodies[k::self.count], seconds, concurrency, rate / self.count, start_at)
                for k in range(self.count)]
        results = self.pool.starmap(drive, jobs)
        answered = sum(r[0] for r in results)
        errors = sum(r[1] for r in results)
        return answered, errors, np.array([x for r in results for x in r[2]]) * 1e3

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def start_standins(count: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, urls = [], []
    for _ in range(count):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "helmrec.load.bench.standin_backend", f"--port={port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            proc.kill()
            raise RuntimeError(f"stand-in backend did not start: {line}{proc.stdout.read()}")
        procs.append(proc)
        urls.append(f"127.0.0.1:{port}")
    return procs, urls


def start_workers(backends: list[str], workers: int, policy: str, python_path: str | None,
                  data_plane: str = "python", cpus: set[int] | None = None) -> tuple[subprocess.Popen[str], str, list[int]]:
    """`helmrec route --workers N` over `backends`; returns it, its URL and the pids that route.

    With `data_plane="native"` (one process) the pids are the router's and its hop's.
    """
    port = free_port()
    env = dict(os.environ)
    if python_path:  # another checkout's router (a before/after comparison in one run)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (python_path, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "helmrec.cli", "route", *(f"--backend={b}" for b in backends), f"--grpc-port={port}",
         "--http-port=-1", f"--policy={policy}", "--max-in-flight=1024", f"--workers={workers}",
         f"--data-plane={data_plane}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    assert proc.stdout is not None
    pids = []
    while len(pids) < workers:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"router did not start: {proc.stdout.read()}")
        if " ready (pid " in line:
            pids.append(int(line.split("(pid ", 1)[1].split(",", 1)[0]))
    if data_plane == "native":
        pids += [int(c) for c in Path(f"/proc/{pids[0]}/task/{pids[0]}/children").read_text().split()]
    return proc, f"127.0.0.1:{port}", pids


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def cluster_rates(args: argparse.Namespace, console: Console) -> None:
    """Ceiling per worker count, and added latency at fractions of that ceiling, over stand-in backends."""
    cores = os.cpu_count() or 1
    router_cpus = set(args.router_cpus) if args.router_cpus else None
    if router_cpus is not None:  # the rest of the bench (stand-ins, load generators) inherits the other cores
        os.sched_setaffinity(0, os.sched_getaffinity(0) - router_cpus)
    bodies = payloads(2000, args.history, args.candidates)
    standins, backend_urls = start_standins(args.standins)
    loadgen = LoadGenerators(args.loadgens, bodies)
    # (label, workers, req/s, router CPU s per request), in run order; label "native": the hop
    ceilings: list[tuple[str, int, float, float]] = []
    rows = []
    try:
        loadgen.run(backend_urls, 1.0, concurrency=8)  # warm the pool's processes
        direct, _, _ = loadgen.run(backend_urls, args.seconds, concurrency=args.concurrency)
        direct_ceiling = direct / args.seconds
        setups = [(w, "python") for w in args.workers] + [(1, "native")] * args.native
        for workers, plane in setups:
            proc, url, pids = start_workers(backend_urls, workers, args.policy, args.router_python_path, plane,
                                            router_cpus)
            label = "native" if plane == "native" else str(workers)
            try:
                loadgen.run([url], 1.0, concurrency=args.concurrency)  # connections, warm paths
                cpu0 = sum(cpu_seconds(p) for p in pids)
                answered, errors, _ = loadgen.run([url], args.seconds, concurrency=args.concurrency)
                cpu = sum(cpu_seconds(p) for p in pids) - cpu0
                ceiling = answered / args.seconds
                ceilings.append((label, workers, ceiling, cpu / max(answered, 1)))
                for fraction in args.fractions:
                    rate = fraction * ceiling
                    _, e_direct, lat_direct = loadgen.run(backend_urls, args.seconds, rate=rate)
                    _, e_router, lat_router = loadgen.run([url], args.seconds, rate=rate)
                    rows.append((label, fraction, rate, lat_direct, lat_router, e_direct + e_router + errors))
            finally:
                stop(proc)
    finally:
        loadgen.close()
        for p in standins:
            p.kill()
            p.wait(10)

    where = (f"{cores} cores; {args.standins} stand-in backends, {args.loadgens} load-generator processes x "
             f"{args.concurrency} in flight; history {args.history}, {args.candidates} candidates, {args.policy}"
             + (f"; router on cores {sorted(router_cpus)}, the rest on the others" if router_cpus else ""))
    table = Table(title=f"router ceiling by workers ({where})")
    for col in ("workers", "ceiling req/s", "x 1 worker", "per worker vs 1", "router CPU us/req"):
        table.add_column(col)
    base = ceilings[0][2] / ceilings[0][1]  # the first row's ceiling per worker
    for label, workers, ceiling, cpu in ceilings:
        table.add_row(label, f"{ceiling:.0f}", f"{ceiling / (base):.2f}", f"{ceiling / (base * workers):.2f}",
                      f"{cpu * 1e6:.0f}")
    console.print(table)
    console.print(f"stand-in backends straight, same load: {direct_ceiling:.0f} req/s")
    lat = Table(title="added latency over a direct call (open loop, Poisson arrivals, same rate, same run)")
    for col in ("workers", "load", "req/s", "P50 direct ms", "P50 router ms", "added P50", "P99 direct ms",
                "P99 router ms", "added P99", "errors"):
        lat.add_column(col)
    for label, fraction, rate, d, r, errs in rows:
        p50d, p99d = np.percentile(d, 50), np.percentile(d, 99)
        p50r, p99r = np.percentile(r, 50), np.percentile(r, 99)
        lat.add_row(label, f"{fraction:.0%}", f"{rate:.0f}", f"{p50d:.3f}", f"{p50r:.3f}", f"{p50r - p50d:+.3f}",
                    f"{p99d:.3f}", f"{p99r:.3f}", f"{p99r - p99d:+.3f}", str(errs))
    console.print(lat)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tritonservers", action="store_true",
                        help="the hop over 3 real tritonservers (idle latency, CPU per request) instead of cluster rates")
    parser.add_argument("--requests", type=int, default=300, help="--tritonservers: latency requests")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight per load generator (closed loop)")
    parser.add_argument("--policy", choices=POLICIES, default="helm")
    parser.add_argument("--history", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=32)
    cores = os.cpu_count() or 1
    parser.add_argument("--workers", type=_ints, default=[1, 2] if cores < 8 else [1, 2, 4, 8],
                        help="router worker counts to measure, e.g. 1,2,4,8")
    parser.add_argument("--fractions", type=_floats, default=[0.1, 0.5, 0.9], help="loads for the latency rows")
    parser.add_argument("--standins", type=int, default=max(1, cores // 4), help="stand-in backend processes")
    parser.add_argument("--loadgens", type=int, default=max(1, cores // 4), help="load-generator processes")
    parser.add_argument("--native", type=int, default=0, metavar="N",
                        help="also measure the native data plane (helmrec-hop, `make hop`) N times, after the workers")
    parser.add_argument("--router-cpus", type=_ints, default=None, metavar="LIST",
                        help="pin the router to these cores and everything else to the others, e.g. 1")
    parser.add_argument("--router-python-path", default=None,
                        help="PYTHONPATH for the router processes only (run another checkout's router)")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 150))  # the latency table has ten columns
    if args.tritonservers:
        real_backends(args, console)
    else:
        cluster_rates(args, console)


if __name__ == "__main__":
    main()
