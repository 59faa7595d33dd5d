"""What the router costs: added latency (P50/P99 with vs without it) and its throughput ceiling.

    python -m helmrec.load.bench.router [--requests 300] [--seconds 10] [--concurrency 16] [--policy helm]

Three tritonservers (tiny preset, CPU) and one `helmrec route` process, all on
this machine, measured in the same run:
1. latency: one client, requests alternating between one backend directly and
   a router in front of that backend alone; the two paths use disjoint user
   ids with the same histories and take turns going first, so the backend's
   caches treat both alike and the difference is the router;
2. throughput: an asyncio client with N requests in flight for a fixed time,
   straight to the backends (client-side round robin) and through the router,
   plus the router process's CPU seconds per request (its single-core ceiling);
3. the routing decision alone: `policy.choose` per request, in-process.
The last line is the headline: added P50/P99 and the router's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from rich.console import Console
from rich.table import Table

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--policy", choices=POLICIES, default="helm")
    parser.add_argument("--history", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=32)
    args = parser.parse_args(argv)
    console = Console()

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


if __name__ == "__main__":
    main()
