"""`helmrec bench`: N real tritonservers, the router and a headless Locust run; P50/P99, SLO, hit rates, alpha.

    helmrec bench --nodes 2 --policy helm --alpha adaptive --shape burst --duration 60 --out bench-out
    helmrec bench --compare --quick --out bench-out      # best static alpha vs adaptive+helm, all shapes

A single run measures one system on one or more shapes. `--compare` measures,
per shape and on the same seed (the same requests), every alpha of
`--static-alphas` with `--baseline-policy`, keeps the one with the lowest P99
(the best static alpha in hindsight: a stronger baseline than any one fixed
choice), then the adaptive controller with the `helm` router, and prints the
P99 reduction and SLO satisfaction side by side. Every system gets freshly
started nodes, so no run inherits another's caches.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from helmrec.launcher import LauncherError
from helmrec.load.bench.cluster import ADAPTIVE, ClusterConfig
from helmrec.load.bench.report import Comparison, best_static, write_run, write_summary
from helmrec.load.bench.run import BenchError, RunResult, RunSpec, run_once
from helmrec.load.bench.workload import WorkloadConfig, add_trace_shape_options
from helmrec.router.config import POLICIES
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
    add("--quick", action="store_true", help="short runs sized for a shared 2-core machine")
    add("--compare", action="store_true", help="best static alpha vs adaptive+helm on every shape")
    add("--static-alphas", help=f"alphas swept for the best static (default {FULL.static_alphas}, "
        f"--quick {QUICK.static_alphas})")  # fmt: skip
    add("--baseline-policy", choices=POLICIES, default="round_robin", help="router policy of the static runs")
    add("--per-user-rps", type=float, default=2.0, help="requests/s per Locust user; users = rate / this")
    add("--pool-bytes", type=int, default=c.pool_bytes, help="each node's pool budget (EMB + KV)")
    add("--device", choices=("cpu", "cuda", "auto"), default=c.device, help="auto: CUDA where present")
    add("--preset", default=c.preset, help="HSTU preset of the seeded network the nodes serve")
    add("--threads-per-node", type=int, default=c.threads_per_node, help="torch threads per node")
    add_trace_shape_options(parser)


def parse_alphas(text: str) -> tuple[str, ...]:
    """'0.2,0.8' -> ('0.2', '0.8'), each checked to be in [0, 1]."""
    alphas = tuple(part.strip() for part in text.split(",") if part.strip())
    if not alphas:
        raise ValueError(f"--static-alphas {text!r}: give at least one alpha")
    for a in alphas:
        ClusterConfig(alpha=a)  # raises naming the field and the rule
    return alphas


def _measure(console: Console, spec: RunSpec, out: Path) -> RunResult:
    label = spec.cluster.label
    console.print(f"[bold]{spec.workload.regime}[/]: {label} ({spec.cluster.nodes} nodes, {spec.workload.duration_s:g} s) ...")
    run_dir = out / spec.workload.regime / label.replace(" ", "_").replace("+", "__")
    result = run_once(spec, run_dir)
    write_run(result)
    s = result.summary
    console.print(
        f"  {s.requests} requests, {s.failures} failures, P50 {s.p50_ms:.2f} ms, P99 {s.p99_ms:.2f} ms, "
        f"SLO {s.slo_satisfaction:.3f}, {s.throughput_rps:.1f} req/s, KV hit {result.caches.kv_hit_rate:.3f}, "
        f"EMB hit {result.caches.emb_hit_rate:.3f}, mean alpha {result.caches.mean_alpha:.3f}"
    )
    return result


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
        )
        alphas = parse_alphas(args.static_alphas or size.static_alphas) if args.compare else ()
        if args.slo_ms <= 0:
            raise ValueError(f"--slo-ms must be > 0, got {args.slo_ms}")
    except ValueError as exc:
        console.print(f"helmrec bench: {exc}", style="red")
        return 2
    shapes = args.shape or (list(REGIMES) if args.compare else ["burst"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def spec(regime: str, cluster: ClusterConfig) -> RunSpec:
        return RunSpec(cluster=cluster, workload=workload.with_regime(regime), per_user_rps=args.per_user_rps, slo_ms=args.slo_ms)

    runs: list[RunResult] = []
    comparisons: list[Comparison] = []
    try:
        for regime in shapes:
            if not args.compare:
                runs.append(_measure(console, spec(regime, base_cluster), out))
                continue
            statics = [
                _measure(console, spec(regime, dataclasses.replace(base_cluster, alpha=a, policy=args.baseline_policy)), out)
                for a in alphas
            ]
            adaptive = _measure(console, spec(regime, dataclasses.replace(base_cluster, alpha=ADAPTIVE, policy="helm")), out)
            runs += [*statics, adaptive]
            comparisons.append(Comparison(regime, best_static(statics), adaptive))
    except (BenchError, LauncherError) as exc:
        console.print(f"helmrec bench: {exc}", style="red")
        if runs:
            write_summary(out, runs, comparisons, _command())
        return 1

    table = write_summary(out, runs, comparisons, _command())
    if table:
        print(table)
    failures = sum(r.summary.failures for r in runs)
    console.print(f"reports: {out / 'report.md'}; {failures} failed requests over {len(runs)} runs")
    return 0 if failures == 0 else 1


def _command() -> str:
    return "helmrec " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else shlex.join(sys.argv)
