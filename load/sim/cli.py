"""`helmrec sim`: the cluster grid of issue 8 and its report.

    helmrec sim --json out/sim.json [--workload production|paper] [--nodes 32] [--quick] [--report docs/sim.md]

`--quick` is the CI-sized grid (2 nodes, one short burst, a 2-alpha sweep);
the full grid prints and records its own run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from helmrec.load.sim import config
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.grid import GridConfig, run_grid
from helmrec.workload.traces import REGIMES, WORKLOADS

FULL_SWEEP = tuple(round(0.1 * k, 1) for k in range(1, 10))
QUICK_SWEEP = (0.3, 0.7)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, required=True, help="write the report JSON here")
    parser.add_argument(
        "--workload",
        choices=tuple(WORKLOADS),
        default="production",
        help="production: H200 nodes, DLRMv3-sized histories and item table (docs/workload.md); "
        "paper: the earlier 4 GB H100 node (default production)",
    )
    parser.add_argument("--nodes", type=int, default=None, help="cluster size (default 32; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="CI-sized grid: short traces, coarse sweep (< 1 min)")
    parser.add_argument("--sweep-nodes", type=int, default=None, help="nodes of the static-alpha sweep (default min(nodes, 4))")
    parser.add_argument("--duration", type=float, default=None, help="trace seconds (default: the workload's)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds (default: the workload's)")
    parser.add_argument("--sweep-alphas", default=None, help="comma-separated static alphas to sweep (default 0.1..0.9 by 0.1)")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset of " + ",".join(REGIMES))
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slo-ms", type=float, default=None, help="latency target of one request (default: the workload's)")
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown report here (PNGs beside it)")
    parser.add_argument("--policy", default=None, help="controller policy .npz (default: the packaged one)")


def workload_sim(workload: str, nodes: int, quick: bool = False) -> SimConfig:
    """The cluster of a named workload; `quick` shortens its trace to one burst after a short lead-in."""
    sim = config.workload_sim(workload, nodes)
    if not quick:
        return sim
    if workload == "production":
        return dataclasses.replace(sim, duration_s=50.0, warmup_s=20.0, burst_start_s=30.0)
    return dataclasses.replace(sim, duration_s=8.0, warmup_s=3.0, burst_every_s=10.0, burst_len_s=2.0)


def grid_from_args(args: argparse.Namespace) -> GridConfig:
    nodes = args.nodes if args.nodes is not None else (2 if args.quick else 32)
    sim = workload_sim(args.workload, nodes, args.quick)
    sim = dataclasses.replace(
        sim,
        seed=args.seed,
        duration_s=sim.duration_s if args.duration is None else args.duration,
        warmup_s=sim.warmup_s if args.warmup is None else args.warmup,
        slo_ms=sim.slo_ms if args.slo_ms is None else args.slo_ms,
    )
    sweep_nodes = args.sweep_nodes if args.sweep_nodes is not None else min(nodes, 4)
    regimes = tuple(r.strip() for r in args.regimes.split(",") if r.strip())
    if args.sweep_alphas is not None:
        try:
            sweep = tuple(float(a) for a in args.sweep_alphas.split(",") if a.strip())
        except ValueError:
            raise SystemExit(f"--sweep-alphas {args.sweep_alphas!r}: expected comma-separated numbers in [0, 1]") from None
    else:
        sweep = QUICK_SWEEP if args.quick else FULL_SWEEP
    return GridConfig(
        sim=sim,
        sweep_nodes=sweep_nodes,
        sweep_alphas=sweep,
        regimes=regimes,
        workers=args.workers,
        policy_path=args.policy,
    )


def run(args: argparse.Namespace) -> int:
    grid = grid_from_args(args)
    report, series = run_grid(grid, log=lambda line: print(line, flush=True))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.report is not None:
        from helmrec.load.sim.report import existing_discussion, plot, plot_hits, render

        stem = args.report.stem
        alpha_png = args.report.with_name(f"{stem}_alpha.png")
        hits_png = args.report.with_name(f"{stem}_hits.png")
        plot(series, alpha_png)
        plot_hits(report, hits_png)
        command = "helmrec sim " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else "helmrec sim"
        args.report.write_text(render(report, command, alpha_png.name, hits_png.name, existing_discussion(args.report)))
    print(f"{'regime':8s}{'P99 vs best static':>20s}{'SLO':>9s}{'alpha gap':>11s}{'full P99 ms':>13s}  best static")
    for regime, r in report["regimes"].items():
        best = r["policies"][r["best_static"]["policy"]]["p99_ms"]
        print(
            f"{regime:8s}{-100 * r['p99_reduction_vs_best_static']:+19.1f}%{100 * r['slo_satisfaction']:8.2f}%"
            f"{r['alpha_gap']:11.4f}{r['policies']['full']['p99_ms']:13.2f}"
            f"  {r['best_static']['policy']} {best:.2f} ms"
        )
    worst = min(r["p99_reduction_vs_best_static"] for r in report["regimes"].values())
    print(f"{report['nodes']} nodes, {report['run_time_s']:.0f} s; worst-regime P99 reduction vs best static: {100 * worst:.1f}%")
    return 0
