"""Served throughput of `hstu_ensemble`: closed-loop stock-tritonclient load against one
tritonserver, next to the in-process ceiling of the same pooled path measured in the same run.

    helmrec bench-served --device cuda --preset large --history 2048 --candidates 256 \
        --concurrency 1 8 32 128 --processes 8 --mix hit grow mixed --json out/served.json

Load comes from `--processes` load-generator processes, each with its share of the
`--concurrency` client threads (one Python process cannot drive thousands of gRPC
requests a second). Every thread owns its users, so a user's requests never race:

- `hit`: a user sends the same history again (a full KV hit: rank only);
- `grow`: a returning user whose history gained one event (extend one token, then rank);
- `mixed`: `grow` with `--miss-share` of requests from new users (a full prefill) and
  `--hit-share` exact repeats; rows give each class's own latency, so a KV hit's P99
  with prefills around it can be read against its P99 in `hit`.

Users start at `--history` events and grow by at most `--grow-room`; the server
captures the graphs of both buckets at load (`warmup_shapes`), so no capture runs
while the clock does. The ceiling is `PooledRanker.rank_many` in this process on
groups of `--group` requests of the same mix: pool lookup, graphs and commit, without
Triton, gRPC or the clients. The last line is the headline ratio.

Each served row also carries hstu_pool's own Triton statistics over the row: requests per
execute, execute time, queue time per request and the stub's busy share of the row's
wall time (near 1: the one stub is the bottleneck; well below: Triton, gRPC or the load
generators are). `--py-spy DIR` samples the stub during each row, and this process during
each ceiling, into collapsed stacks: where that busy time goes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helmrec import schema
from helmrec.load.bench.gpu_cap import AUTO_CAP_SHARE, node_cap
from helmrec.router.config import DATA_PLANES, POLICIES
from helmrec.schema import Limits

MIXES = ("hit", "grow", "mixed")
NEW_USER_BASE = 10_000_000  # ids of `mixed`'s new users: disjoint from the warmed ones


@dataclass(frozen=True)
class Traffic:
    """What every load generator needs to build the same users' requests."""

    history: int
    candidates: int
    num_items: int
    grow_room: int
    miss_share: float
    hit_share: float
    seed: int

    def next_kind(self, mix: str, rng: np.random.Generator, length: int) -> str:
        """What a user now at `length` events sends next under `mix`: "miss" (a new user), "grow"
        (one more event) or "hit" (the same history; also a grow past `grow_room`)."""
        kind = mix
        if mix == "mixed":
            draw = rng.random()
            kind = "miss" if draw < self.miss_share else "hit" if draw < self.miss_share + self.hit_share else "grow"
        return "hit" if kind == "grow" and length >= self.history + self.grow_room else kind


def user_arrays(traffic: Traffic, user: int, length: int) -> dict[str, np.ndarray]:
    """The public request of `user` with the first `length` events of its (fixed) history."""
    pos = np.arange(length, dtype=np.int64)
    rng = np.random.default_rng(traffic.seed * 1_000_003 + user)
    return {
        schema.USER_ID: np.array([user], np.int64),
        schema.HISTORY_ITEM_IDS: 1 + (user * 7919 + pos * 104729) % (traffic.num_items - 1),
        schema.HISTORY_TIMESTAMPS: 1_700_000_000 + pos * 60,
        schema.HISTORY_ACTIONS: ((user + pos) % 2).astype(np.int32),
        schema.CANDIDATE_ITEM_IDS: rng.integers(1, traffic.num_items, traffic.candidates).astype(np.int64),
    }


def _client_thread(url: str, traffic: Traffic, mix: str, users: list[int], lengths: dict[int, int],
                   stop_at: float, out: list[tuple[str, float]], seed: int) -> None:  # fmt: skip
    import tritonclient.grpc as grpcclient  # noqa: PLC0415 - in the load-generator processes only

    from helmrec.load.client import infer_inputs  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(seed)
    new_user = NEW_USER_BASE + seed * 1_000_000
    k = 0
    while time.perf_counter() < stop_at:
        user = users[k % len(users)]
        k += 1
        kind = traffic.next_kind(mix, rng, lengths[user])
        if kind == "miss":
            arrays = user_arrays(traffic, new_user, traffic.history)
            new_user += 1
        else:
            lengths[user] += kind == "grow"
            arrays = user_arrays(traffic, user, lengths[user])
        t0 = time.perf_counter()
        client.infer(schema.ENSEMBLE_MODEL, infer_inputs(grpcclient, arrays))
        out.append((kind, (time.perf_counter() - t0) * 1e3))
    client.close()


def _load_generator(job: tuple) -> tuple[list[tuple[str, float]], dict[int, int]]:
    """One process: a thread per user share, all stopping at `seconds` from now."""
    url, traffic, mix, user_shares, lengths, seconds, seed = job
    import tritonclient.grpc  # noqa: F401, PLC0415 - imported before the clock starts, not inside the first row

    stop_at = time.perf_counter() + seconds
    outs: list[list[tuple[str, float]]] = [[] for _ in user_shares]
    threads = [
        threading.Thread(target=_client_thread, args=(url, traffic, mix, users, lengths, stop_at, outs[i], seed * 1000 + i))
        for i, users in enumerate(user_shares)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for o in outs for x in o], lengths


def closed_loop(pool: mp.pool.Pool, url: str, traffic: Traffic, mix: str, concurrency: int, processes: int,
                lengths: dict[int, int], seconds: float, spy: Path | None = None,
                nodes: Sequence[str] = ()) -> dict:  # fmt: skip
    """`concurrency` client threads over `processes` processes for `seconds`; updates `lengths`.
    Load goes to `url`; hstu_pool's statistics are read from `nodes` (default: `url` itself; the
    servers behind a router, whose front door exposes only the public model).
    With `spy`, py-spy samples one hstu_pool stub over the row into `spy/<mix>_<concurrency>.txt`."""
    nodes = list(nodes) or [url]
    users = sorted(lengths)
    shares = [users[i::concurrency] for i in range(concurrency)]
    procs = min(processes, concurrency)
    jobs = []
    for p in range(procs):
        mine = shares[p::procs]
        owned = {u: lengths[u] for share in mine for u in share}
        jobs.append((url, traffic, mix, mine, owned, seconds, 1 + p + 100 * concurrency))
    before = [pool_statistics(node) for node in nodes]
    with py_spy(stub_pid(schema.POOL_MODEL) if spy else None, seconds, spy and spy / f"{mix}_{concurrency}.txt"):
        t0 = time.perf_counter()
        results = pool.map(_load_generator, jobs)
        elapsed = time.perf_counter() - t0
    window = min(elapsed, seconds + 0.5)
    samples = [x for res, _ in results for x in res]
    for _, owned in results:
        lengths.update(owned)
    row = {"mix": mix, "concurrency": concurrency, "requests": len(samples), "rps": len(samples) / window}
    row.update(pool_stats_delta(before, [pool_statistics(node) for node in nodes], window))
    row.update(_percentiles([ms for _, ms in samples]))
    for kind in sorted({k for k, _ in samples}):
        row[f"{kind}_requests"] = sum(1 for k, _ in samples if k == kind)
        row.update({f"{kind}_{key}": v for key, v in _percentiles([ms for k, ms in samples if k == kind]).items()})
    return row


def pool_statistics(url: str) -> dict:
    """hstu_pool's cumulative Triton statistics: one `model_stats` entry of ModelStatistics in its JSON form."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.get_inference_statistics(model_name=schema.POOL_MODEL, as_json=True)["model_stats"][0]
    finally:
        client.close()


def _counter(stats: dict, *path: str) -> int:
    """One counter of ModelStatistics' JSON form, where uint64s are strings and zeros are left out."""
    for key in path[:-1]:
        stats = stats.get(key, {})
    return int(stats.get(path[-1], 0))


def _batch_ns(stats: dict, phase: str) -> int:
    return sum(_counter(b, phase, "ns") for b in stats.get("batch_stats", []))


def pool_stats_delta(before: Sequence[dict], after: Sequence[dict], wall_s: float) -> dict[str, float]:
    """hstu_pool's work between two `pool_statistics` snapshots of each node, `wall_s` apart.

    Execute times come from `batch_stats`, which count each execute once: the per-request
    `inference_stats` charge every request of a group the whole group's compute time.
    `pool_busy` is the share of `wall_s` a node's one stub spent executing, averaged over nodes;
    `pool_node_shares` is each node's share of the requests (how evenly the router spread them)."""

    def total(count: Callable[[dict], int]) -> int:
        return sum(count(a) - count(b) for b, a in zip(before, after, strict=True))

    executes = total(lambda s: _counter(s, "execution_count"))
    requests = total(lambda s: _counter(s, "inference_count"))
    queued = total(lambda s: _counter(s, "inference_stats", "queue", "count"))
    queue_ns = total(lambda s: _counter(s, "inference_stats", "queue", "ns"))
    phase_ns = {p: total(lambda s, p=p: _batch_ns(s, p)) for p in ("compute_input", "compute_infer", "compute_output")}
    per_execute = 1e6 * max(executes, 1)
    return {
        "pool_executes": executes,
        "pool_group": requests / max(executes, 1),
        "pool_execute_ms": sum(phase_ns.values()) / per_execute,
        **{f"pool_{p.removeprefix('compute_')}_ms": ns / per_execute for p, ns in phase_ns.items()},
        "pool_queue_ms": queue_ns / 1e6 / max(queued, 1),
        "pool_busy": sum(phase_ns.values()) / 1e9 / wall_s / len(after),
        "pool_node_shares": [
            (_counter(a, "inference_count") - _counter(b, "inference_count")) / max(requests, 1)
            for b, a in zip(before, after, strict=True)
        ],
    }


def stub_pid(model: str) -> int:
    """The pid of `model`'s Python-backend stub (one instance), found by its command line."""
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        if args[0].endswith(b"triton_python_backend_stub") and any(f"/{model}/".encode() in a for a in args[1:]):
            return int(proc.name)
    raise RuntimeError(f"no triton_python_backend_stub of {model} is running")


@contextmanager
def py_spy(pid: int | None, seconds: float, out: Path | None) -> Iterator[None]:
    """py-spy samples `pid` (every thread, idle ones too, at 250 Hz without pausing it) for
    `seconds` into collapsed stacks at `out`; nothing when `pid` is None."""
    if pid is None or out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "250",
           "--format", "raw", "--nonblocking", "--idle", "--threads", "-o", str(out)]  # fmt: skip
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        _, err = spy.communicate()
        if spy.returncode:
            print(f"py-spy on pid {pid} failed ({spy.returncode}): {err.strip()[-400:]}", flush=True)


def _percentiles(ms: Sequence[float]) -> dict[str, float]:
    if not ms:
        return {}
    arr = np.asarray(ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def in_process_ceiling(
    repo: Path, device: str, traffic: Traffic, mix: str, group: int, users: int, seconds: float,
    profile: Path | None = None, spy: Path | None = None,
) -> dict:  # fmt: skip
    """`PooledRanker.rank_many` on groups of `group` requests of `mix`, in this process.
    With `profile`, one more group runs under torch.profiler and its op table (host and
    device time, top 40 by host time) is written there: where a group's time goes.
    With `spy`, py-spy samples this process over the timed loop into `spy/ceiling_<mix>.txt`."""
    import torch  # noqa: PLC0415

    from helmrec.hstu.weights import load  # noqa: PLC0415
    from helmrec.launcher.repository import WEIGHTS  # noqa: PLC0415
    from helmrec.model_config import parameters  # noqa: PLC0415
    from helmrec.pool.config import PoolConfig  # noqa: PLC0415
    from helmrec.pool.ranker import PooledRanker, RankRequest  # noqa: PLC0415
    from helmrec.serving.network import serving_dtype  # noqa: PLC0415

    dev = torch.device(device)
    model = load(repo / WEIGHTS).eval().to(dev, serving_dtype("auto", dev))
    served = parameters(repo / schema.POOL_MODEL / "config.pbtxt")  # the pool hstu_pool ran with
    config = PoolConfig.from_triton_parameters(served, device=device)

    def request(user: int, length: int) -> RankRequest:
        a = {k: torch.from_numpy(v) for k, v in user_arrays(traffic, user, length).items()}
        ts = a[schema.HISTORY_TIMESTAMPS]
        return RankRequest(
            user, a[schema.HISTORY_ITEM_IDS], ts, a[schema.HISTORY_ACTIONS].long(), a[schema.CANDIDATE_ITEM_IDS], int(ts[-1]) + 60
        )

    rng = np.random.default_rng(traffic.seed)
    lengths = dict.fromkeys(range(users), traffic.history)
    new_user = NEW_USER_BASE
    with PooledRanker(model, config, graph_max_batch=int(served["graph_max_batch"])) as ranker:
        ranker.warm([(traffic.history, traffic.candidates), (traffic.history + traffic.grow_room, traffic.candidates)])
        for lo in range(0, users, group):
            ranker.rank_many([request(u, traffic.history) for u in range(lo, min(users, lo + group))])
        lat, served, k = [], 0, 0
        with py_spy(os.getpid() if spy else None, seconds, spy and spy / f"ceiling_{mix}.txt"):
            stop_at = time.perf_counter() + seconds
            while time.perf_counter() < stop_at:
                batch = []
                for _ in range(group):
                    user = k % users
                    k += 1
                    kind = traffic.next_kind(mix, rng, lengths[user])
                    if kind == "miss":
                        batch.append(request(new_user, traffic.history))
                        new_user += 1
                        continue
                    lengths[user] += kind == "grow"
                    batch.append(request(user, lengths[user]))
                t0 = time.perf_counter()
                ranker.rank_many(batch)
                lat.append((time.perf_counter() - t0) * 1e3)
                served += len(batch)
        elapsed = sum(lat) / 1e3
        if profile is not None:
            with torch.profiler.profile() as prof:
                ranker.rank_many(batch)
            profile.write_text(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40))
    return {"mix": mix, "group": group, "users": users, "requests": served, "rps": served / elapsed,
            "group_p50_ms": statistics.median(lat), "group_p99_ms": float(np.percentile(lat, 99))}  # fmt: skip


def node_users(args: argparse.Namespace) -> int:
    """The users one node holds: the in-process ceiling ranks this many, with one node's pool.
    With `--servers N` each node caches only its share of the users' KV; the ceiling's one pool
    holding all of them would evict (at 14,000 tokens 96 users need 12.9 GiB of KV, more than a
    16 GiB pool's KV side) and rank misses the served nodes never pay."""
    return -(-args.users // args.servers)


def add_traffic_options(parser: argparse.ArgumentParser) -> None:
    """The nodes, the door in front of them and the users every load bench of `hstu_ensemble`
    shares (bench-served, bench-loadgen)."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history", type=int, default=32, help="events of each user's history at the start")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--grow-room", type=int, default=32, help="events a user may gain over the run")
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--pool-bytes", type=int, default=256 * 2**20)
    parser.add_argument("--page-bytes", type=int, default=1 << 20)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--servers", type=int, default=1, help="tritonservers on the device; more than 1: behind helmrec route")
    parser.add_argument("--policy", choices=POLICIES, default="kv_aware", help="the router's policy (--servers > 1)")
    parser.add_argument("--router-workers", type=int, default=1, help="helmrec route --workers (--servers > 1)")
    parser.add_argument("--data-plane", choices=DATA_PLANES, default="python", help="helmrec route --data-plane (--servers > 1)")
    parser.add_argument("--device-memory-bytes", type=int, default=None,
                        help="hstu_pool's device_memory_bytes: each server's cap on the GPU memory it reserves; 0: no cap. "
                             f"Default (auto): {AUTO_CAP_SHARE:.0%}% of the GPU's memory / --servers on cuda with --servers > 1, "
                             "else 0")  # fmt: skip


def device_memory_bytes(args: argparse.Namespace) -> int:
    """Each server's `device_memory_bytes` (`node_cap` of `--device-memory-bytes`)."""
    return node_cap(args.device_memory_bytes, args.device, args.servers)


def check_door_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Counts that must be positive, refused before any server starts."""
    for name in ("servers", "router_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device_memory_bytes is not None and args.device_memory_bytes < 0:
        parser.error(f"--device-memory-bytes must be >= 0, got {args.device_memory_bytes}")


def warmup_shapes(args: argparse.Namespace) -> str:
    """hstu_pool's `warmup_shapes` for the run: both history buckets its users reach, on a GPU."""
    if args.device != "cuda":
        return ""
    return f"{args.history}x{args.candidates},{args.history + args.grow_room}x{args.candidates}"


def traffic_for(args: argparse.Namespace, limits: Limits, miss_share: float = 0.0, hit_share: float = 0.0) -> Traffic:
    """The users' traffic on a network with `limits`; refused when their histories would outgrow it."""
    if args.history + args.grow_room > limits.max_seq_len:
        raise SystemExit(
            f"--history {args.history} + --grow-room {args.grow_room} exceed the preset's max history {limits.max_seq_len}"
        )
    return Traffic(args.history, args.candidates, limits.num_items, args.grow_room, miss_share, hit_share, args.seed)


def stage(args: argparse.Namespace, folder: Path, miss_share: float = 0.0, hit_share: float = 0.0) -> tuple[Path, Traffic]:
    """A model repository for `args` (static alpha; on a GPU the graphs of the run's two history
    buckets are captured at load) and the traffic its users send."""
    from helmrec.launcher.repository import stage_repository  # noqa: PLC0415
    from helmrec.serving.network import read_limits  # noqa: PLC0415

    pool_parameters = {"pool_bytes": str(args.pool_bytes), "page_bytes": str(args.page_bytes), "alpha": str(args.alpha),
                       "controller": "static", "warmup_shapes": warmup_shapes(args),
                       "device_memory_bytes": str(device_memory_bytes(args))}  # fmt: skip
    repo = stage_repository(folder / "model_repository", args.preset, args.seed, pool_parameters=pool_parameters)
    return repo, traffic_for(args, read_limits(repo / "hstu" / "1" / "weights.pt"), miss_share, hit_share)


@dataclass(frozen=True)
class Door:
    """Where the load goes (`url`), the nodes whose hstu_pool statistics a row reads, and the repository they serve."""

    url: str
    nodes: tuple[str, ...]
    repo: Path


@contextmanager
def served_door(args: argparse.Namespace, folder: Path) -> Iterator[Door]:
    """One tritonserver (`--servers 1`), or `--servers` of them on the same device behind
    `helmrec route` (`--policy`, `--router-workers`, `--data-plane`): each with the whole
    `--pool-bytes` of its own. Always stopped."""
    from helmrec.launcher import TritonServer  # noqa: PLC0415

    if args.servers == 1:
        repo, _ = stage(args, folder)
        with TritonServer(model_repository=repo, device=args.device, startup_timeout_s=600) as server:
            yield Door(server.grpc_url, (server.grpc_url,), repo)
        return
    from helmrec.load.bench.cluster import Cluster, ClusterConfig  # noqa: PLC0415

    config = ClusterConfig(
        nodes=args.servers, policy=args.policy, alpha=str(args.alpha), pool_bytes=args.pool_bytes, page_bytes=args.page_bytes,
        device=args.device, preset=args.preset, seed=args.seed, startup_timeout_s=600.0, warmup_shapes=warmup_shapes(args),
        router_workers=args.router_workers, data_plane=args.data_plane, device_memory_bytes=device_memory_bytes(args),
    )  # fmt: skip
    with Cluster(config, folder) as cluster:
        yield Door(cluster.router_grpc_url, tuple(s.grpc_url for s in cluster.servers), folder / "model_repository")


def run(args: argparse.Namespace) -> dict:
    from helmrec.serving.network import read_limits  # noqa: PLC0415

    spy = args.py_spy if args.py_spy and shutil.which("py-spy") else None
    if args.py_spy and spy is None:
        print("--py-spy: no py-spy on PATH, rows run without it", flush=True)
    report: dict = {"device": args.device, "preset": args.preset, "history": args.history, "candidates": args.candidates,
                    "users": args.users, "processes": args.processes, "seconds": args.seconds, "servers": args.servers,
                    "device_memory_bytes": device_memory_bytes(args),
                    "router": None if args.servers == 1 else {"policy": args.policy, "workers": args.router_workers,
                                                              "data_plane": args.data_plane},
                    "served": [], "ceiling": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with served_door(args, Path(tmp)) as door, mp.get_context("spawn").Pool(args.processes) as pool:
            report["server_start_s"] = time.perf_counter() - t0
            repo = door.repo
            traffic = traffic_for(args, read_limits(repo / "hstu" / "1" / "weights.pt"), args.miss_share, args.hit_share)
            lengths = dict.fromkeys(range(args.users), args.history)
            first_contact(door.url, traffic, args.users)  # every user's prefill, outside the measurement
            for mix in args.mix:
                for c in args.concurrency:
                    row = closed_loop(pool, door.url, traffic, mix, c, args.processes, lengths, args.seconds, spy, door.nodes)
                    report["served"].append(row)
                    print(json.dumps(row), flush=True)
        for mix in args.mix:  # once the servers have stopped and given the device back; the repository stays until then
            profile = args.profile.with_name(f"{args.profile.stem}_{mix}.txt") if args.profile else None
            row = in_process_ceiling(repo, args.device, traffic, mix, args.group, node_users(args), args.seconds, profile, spy)
            report["ceiling"].append(row)
            print(json.dumps(row), flush=True)
    ceiling = {r["mix"]: r["rps"] for r in report["ceiling"]}
    for row in report["served"]:
        row["share_of_ceiling"] = row["rps"] / ceiling[row["mix"]]
    return report


def first_contact(url: str, traffic: Traffic, users: int) -> None:
    """Every user's first request (a full prefill), so that measured `hit`/`grow` requests find their KV."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    from helmrec.load.client import infer_inputs  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(url)
    for user in range(users):
        client.infer(schema.ENSEMBLE_MODEL, infer_inputs(grpcclient, user_arrays(traffic, user, traffic.history)))
    client.close()


def print_table(report: dict) -> None:
    ceiling = {r["mix"]: r for r in report["ceiling"]}
    print(f"\nserved hstu_ensemble, {report['preset']} on {report['device']}, history {report['history']}, "
          f"{report['candidates']} candidates, {report['users']} users, {report['processes']} load processes")  # fmt: skip
    if report["router"]:
        router = report["router"]
        print(f"{report['servers']} tritonservers behind helmrec route ({router['policy']}, {router['workers']} worker(s), "
              f"{router['data_plane']} data plane)")  # fmt: skip
    print(f"{'mix':<7}{'clients':>8}{'req/s':>10}{'P50 ms':>9}{'P99 ms':>9}{'ceiling req/s':>15}{'share':>8}"
          f"{'group':>7}{'exec ms':>9}{'busy':>6}{'queue ms':>10}")  # fmt: skip
    for row in report["served"]:
        print(f"{row['mix']:<7}{row['concurrency']:>8}{row['rps']:>10.0f}{row.get('p50_ms', 0):>9.2f}{row.get('p99_ms', 0):>9.2f}"
              f"{ceiling[row['mix']]['rps']:>15.0f}{row['share_of_ceiling']:>8.2f}{row['pool_group']:>7.1f}"
              f"{row['pool_execute_ms']:>9.2f}{row['pool_busy']:>6.2f}{row['pool_queue_ms']:>10.2f}")  # fmt: skip
    best = max(report["served"], key=lambda r: r["share_of_ceiling"])
    print(f"best served / in-process ceiling: {best['share_of_ceiling']:.2f} ({best['mix']}, {best['concurrency']} clients)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_traffic_options(parser)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--mix", nargs="+", choices=MIXES, default=list(MIXES))
    parser.add_argument("--miss-share", type=float, default=0.1, help="`mixed`: share of requests from new users")
    parser.add_argument("--hit-share", type=float, default=0.3, help="`mixed`: share of exact repeats")
    parser.add_argument("--seconds", type=float, default=5.0, help="per closed-loop row")
    parser.add_argument("--group", type=int, default=32, help="requests per rank_many group of the in-process ceiling")
    parser.add_argument("--profile", type=Path, help="write each mix's profiled in-process group to PROFILE_<mix>.txt")
    parser.add_argument("--py-spy", type=Path, help="py-spy's collapsed stacks of the stub per row and of each ceiling, here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    check_door_options(parser, args)
    report = run(args)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
