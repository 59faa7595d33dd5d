"""`helmrec bench`: N real tritonservers, the router and a headless Locust run; P50/P99, SLO, hit rates, alpha.

    helmrec bench --nodes 2 --policy helm --alpha adaptive --shape burst --duration 60 --out bench-out
    helmrec bench --compare --quick --out bench-out      # best static alpha vs adaptive+helm, all shapes

A single run measures one system on one or more shapes. `--compare` measures,
per shape and on the same seed (the same requests), every alpha of
`--static-alphas` with `--baseline-policy`, keeps the one with the lowest P99
(the best static alpha in hindsight: a stronger baseline than any one fixed
choice), then the adaptive controller with the `helm` router, and prints the
P99 reduction and SLO satisfaction side by side.

By default every run gets freshly started nodes, so no run inherits another's
caches. `--keep-servers` starts each system's nodes once and runs its shapes
back to back on them (where start-up dominates: the `large` network on a GPU
captures its graphs at load). Each shape then sends other user ids, so no run
finds another's KV prefixes; the EMB cache and an adaptive node's alpha carry
over from the shape before, in the same order for every system.

`--resume` keeps every run an earlier command finished in `--out` (its folder
holds run.json) and runs only the rest, so a comparison can be spread over
several commands of a few minutes each. `--processes N` sends from N Locust
worker processes (one Python process cannot hold a GPU's rate). `--costs TABLE`
simulates every run too (`helmrec.load.bench.predict`) and reports the
simulator's figures beside the measured ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from helmrec.launcher import LauncherError
from helmrec.load.bench.cluster import ADAPTIVE, Cluster, ClusterConfig
from helmrec.load.bench.gpu_cap import AUTO_CAP_SHARE, node_cap
from helmrec.load.bench.predict import Costs, predict
from helmrec.load.bench.report import Comparison, best_static, write_run, write_summary
from helmrec.load.bench.run import BenchError, RunResult, RunSpec, load_record, run_on, run_once, save_record
from helmrec.load.bench.workload import WorkloadConfig, add_trace_shape_options
from helmrec.router.config import DATA_PLANES, POLICIES
from helmrec.workload.traces import REGIMES


@dataclass(frozen=True)
class RunSize:
    """Defaults of the flags that set how long a benchmark takes."""

    duration_s: float
    base_rate: float
    static_alphas: str


# --quick: a single run takes about a minute on a shared 2-core CPU (most of it server start-up).
QUICK = RunSize(duration_s=20.0, base_rate=30.0, static_alphas="0.2,0.8")
FULL = RunSize(duration_s=60.0, base_rate=40.0, static_alphas="0.2,0.5,0.8")
# --keep-servers: shape i's users are i * this + the trace's ids (fewer than this; warm-up uses 2^40).
SHAPE_USER_SPACING = 1 << 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    c = ClusterConfig()
    add = parser.add_argument
    add("--nodes", type=int, default=c.nodes, help="tritonserver instances behind the router")
    add("--policy", choices=POLICIES, default=c.policy, help="router policy of a single run")
    add("--alpha", default=ADAPTIVE, help="'adaptive' or a static EMB share in [0, 1] (single run)")
    add("--shape", action="append", choices=REGIMES, help="workload (repeat; default: burst, all three with --compare)")
    add("--duration", type=float, help=f"seconds per run (default {FULL.duration_s:g}, --quick {QUICK.duration_s:g})")
    add("--rate", type=float, help=f"base requests/s (default {FULL.base_rate:g}, --quick {QUICK.base_rate:g})")
    add("--out", type=Path, default=Path("bench-out"), help="folder for reports, CSVs and plots")
    add("--seed", type=int, default=0, help="trace and weights seed (the same for every compared system)")
    add("--slo-ms", type=float, default=25.0, help="latency SLO; satisfaction = share of requests within it")
    add("--warmup", type=float, default=0.0, help="seconds of each run sent but not measured (caches fill); "
        "the simulated runs skip as many")  # fmt: skip
    add("--quick", action="store_true", help="short runs sized for a shared 2-core machine")
    add("--compare", action="store_true", help="best static alpha vs adaptive+helm on every shape")
    add("--static-alphas", help=f"alphas swept for the best static (default {FULL.static_alphas}, "
        f"--quick {QUICK.static_alphas})")  # fmt: skip
    add("--baseline-policy", choices=POLICIES, default="round_robin", help="router policy of the static runs")
    add("--per-user-rps", type=float, default=2.0, help="requests/s per Locust user; users = rate / this")
    add("--processes", type=int, default=1, help="Locust processes sending (more than 1: workers under a master)")
    add("--keep-servers", action="store_true", help="start each system's nodes once for all its shapes")
    add("--resume", action="store_true", help="keep the runs an earlier command finished in --out")
    add("--costs", type=Path, help="a `helmrec calibrate` cost table of the nodes' preset and device: "
        "the simulator's prediction for every run is put beside its measurement")  # fmt: skip
    add("--pool-bytes", type=int, default=c.pool_bytes, help="each node's pool budget (EMB + KV)")
    add("--device", choices=("cpu", "cuda", "auto"), default=c.device, help="auto: CUDA where present")
    add("--preset", default=c.preset, help="HSTU preset of the seeded network the nodes serve")
    add("--threads-per-node", type=int, default=c.threads_per_node, help="torch threads per node")
    add("--num-items", type=int, help="rows of the item table (default: the preset's); the pool caches a share of them")
    add("--page-bytes", type=int, help="pool page size (default: the repository's)")
    add("--warmup-shapes", default=c.warmup_shapes, help="hstu_pool graphs captured at load, e.g. 2048x256 (GPU)")
    add("--data-plane", choices=DATA_PLANES, default=c.data_plane, help="`helmrec route --data-plane`")
    add("--router-workers", type=int, default=c.router_workers, help="`helmrec route --workers`")
    add("--device-memory-bytes", type=int, help="each node's hstu_pool device_memory_bytes; 0: no cap. Default: "
        f"{AUTO_CAP_SHARE:.0%}% of the GPU / --nodes with several nodes on cuda, else 0")  # fmt: skip
    add_trace_shape_options(parser)


def parse_alphas(text: str) -> tuple[str, ...]:
    """'0.2,0.8' -> ('0.2', '0.8'), each checked to be in [0, 1]."""
    alphas = tuple(part.strip() for part in text.split(",") if part.strip())
    if not alphas:
        raise ValueError(f"--static-alphas {text!r}: give at least one alpha")
    for a in alphas:
        ClusterConfig(alpha=a)  # raises naming the field and the rule
    return alphas


def run_dir(out: Path, spec: RunSpec) -> Path:
    return out / spec.workload.regime / spec.cluster.label.replace(" ", "_").replace("+", "__")


def _report(console: Console, result: RunResult, kept: bool = False) -> RunResult:
    s = result.summary
    console.print(
        f"  {'kept from an earlier command: ' if kept else ''}{s.requests} requests, {s.failures} failures, "
        f"P50 {s.p50_ms:.2f} ms, P99 {s.p99_ms:.2f} ms, SLO {s.slo_satisfaction:.3f}, {s.throughput_rps:.1f} req/s, "
        f"KV hit {result.caches.kv_hit_rate:.3f}, EMB hit {result.caches.emb_hit_rate:.3f}, "
        f"mean alpha {result.caches.mean_alpha:.3f}"
    )
    return result


def _announce(console: Console, spec: RunSpec) -> None:
    c, w = spec.cluster, spec.workload
    console.print(f"[bold]{w.regime}[/]: {c.label} ({c.nodes} nodes, {w.duration_s:g} s) ...")


def _measure(console: Console, spec: RunSpec, out: Path, cluster: Cluster | None = None) -> RunResult:
    """One run, on `cluster` if given (it stays up), else on nodes started for it alone."""
    _announce(console, spec)
    where = run_dir(out, spec)
    result = run_once(spec, where) if cluster is None else run_on(cluster, spec, where)
    write_run(result)
    save_record(result)
    return _report(console, result)


def measure_system(
    console: Console, specs: list[RunSpec], out: Path, keep_servers: bool, resume: bool
) -> list[RunResult]:
    """Every run of one system (one cluster config, one run per shape), in order.

    With `resume`, finished runs are read back and only the rest run; with `keep_servers`
    those share one start of the nodes."""
    done: dict[int, RunResult] = {}
    if resume:
        for i, spec in enumerate(specs):
            kept = load_record(spec, run_dir(out, spec))
            if kept is not None:
                _announce(console, spec)
                done[i] = _report(console, kept, kept=True)
    todo = [i for i in range(len(specs)) if i not in done]
    if todo and keep_servers:
        with tempfile.TemporaryDirectory(prefix="helmrec-bench-") as tmp, Cluster(specs[0].cluster, Path(tmp)) as cluster:
            for i in todo:
                done[i] = _measure(console, specs[i], out, cluster)
    else:
        for i in todo:
            done[i] = _measure(console, specs[i], out)
    return [done[i] for i in range(len(specs))]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started tritonserver and router is stopped on the way out."""
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    console = Console()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    size = QUICK if args.quick else FULL
    try:
        base_cluster = ClusterConfig(
            nodes=args.nodes,
            policy=args.policy,
            alpha=args.alpha,
            pool_bytes=args.pool_bytes,
            device=args.device,
            preset=args.preset,
            seed=args.seed,
            threads_per_node=args.threads_per_node,
            num_items=args.num_items,
            page_bytes=args.page_bytes,
            warmup_shapes=args.warmup_shapes,
            data_plane=args.data_plane,
            router_workers=args.router_workers,
            device_memory_bytes=node_cap(args.device_memory_bytes, args.device, args.nodes),
        )
        workload = WorkloadConfig(
            seed=args.seed,
            duration_s=size.duration_s if args.duration is None else args.duration,
            base_rate=size.base_rate if args.rate is None else args.rate,
            num_users=args.trace_users,
            hot_users=args.hot_users,
            mean_history_len=args.mean_history,
            candidates=args.candidates,
            burst_rate_mult=args.burst_rate_mult,
            workload=args.workload,
        )
        alphas = parse_alphas(args.static_alphas or size.static_alphas) if args.compare else ()
        if args.slo_ms <= 0:
            raise ValueError(f"--slo-ms must be > 0, got {args.slo_ms}")
        # Every run's spec but its cluster and shape; RunSpec checks --processes and --warmup.
        base_run = RunSpec(
            cluster=base_cluster,
            workload=workload,
            per_user_rps=args.per_user_rps,
            slo_ms=args.slo_ms,
            processes=args.processes,
            warmup_s=args.warmup,
        )
        costs = Costs.read(args.costs) if args.costs else None
        if costs is not None:
            costs.check(args.preset)
    except (ValueError, OSError) as exc:
        console.print(f"helmrec bench: {exc}", style="red")
        return 2
    shapes = args.shape or (list(REGIMES) if args.compare else ["burst"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def spec(index: int, regime: str, cluster: ClusterConfig) -> RunSpec:
        # Shared nodes: each shape's users are new to them (ids far apart; warm-up's are above all).
        offset = index * SHAPE_USER_SPACING if args.keep_servers else 0
        shape = dataclasses.replace(workload.with_regime(regime), user_offset=offset)
        return dataclasses.replace(base_run, cluster=cluster, workload=shape)

    if args.compare:
        systems = [dataclasses.replace(base_cluster, alpha=a, policy=args.baseline_policy) for a in alphas]
        systems.append(dataclasses.replace(base_cluster, alpha=ADAPTIVE, policy="helm"))
    else:
        systems = [base_cluster]
    runs: list[RunResult] = []
    try:
        for system in systems:
            specs = [spec(i, regime, system) for i, regime in enumerate(shapes)]
            runs += measure_system(console, specs, out, args.keep_servers, args.resume)
    except (BenchError, LauncherError) as exc:
        console.print(f"helmrec bench: {exc}", style="red")
        if runs:
            write_summary(out, runs, [], _command())
        return 1
    comparisons = []
    if args.compare:
        for regime in shapes:
            mine = [r for r in runs if r.spec.workload.regime == regime]
            comparisons.append(Comparison(regime, best_static(mine), next(r for r in mine if r.spec.cluster.adaptive)))

    # One served path for all: every system has the same nodes, router and network, and one run's
    # 20 probes swing with the host's load (2-9 ms medians on a shared 2-core box).
    probes = tuple(ms for r in runs for ms in r.probe_ms)
    predictions = {r.out_dir: predict(r.spec, costs, probes) for r in runs} if costs else {}
    table = write_summary(out, runs, comparisons, _command(), predictions)
    if table:
        print(table)
    failures = sum(r.summary.failures for r in runs)
    console.print(f"reports: {out / 'report.md'}; {failures} failed requests over {len(runs)} runs")
    return 0 if failures == 0 else 1


def _command() -> str:
    return "helmrec " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else shlex.join(sys.argv)
