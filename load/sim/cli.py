"""`helmrec sim`: the cluster grid of issue 8 and its report.

    helmrec sim --json out/sim.json [--nodes 32] [--quick] [--report docs/sim.md] [--workers 4]

`--quick` is the CI-sized grid (2 nodes, 8 s traces, a 2-alpha sweep); the
full grid prints and records its own run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.grid import GridConfig, run_grid
from helmrec.workload.traces import REGIMES

FULL_SWEEP = tuple(round(0.1 * k, 1) for k in range(1, 10))
QUICK_SWEEP = (0.3, 0.7)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, required=True, help="write the report JSON here")
    parser.add_argument("--nodes", type=int, default=None, help="cluster size (default 32; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="CI-sized grid: short traces, coarse sweep (< 1 min)")
    parser.add_argument("--sweep-nodes", type=int, default=None, help="nodes of the static-alpha sweep (default min(nodes, 4))")
    parser.add_argument("--duration", type=float, default=None, help="trace seconds (default 20; 8 with --quick)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds (default 6; 3 with --quick)")
    parser.add_argument("--sweep-alphas", default=None, help="comma-separated static alphas to sweep (default 0.1..0.9 by 0.1)")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset of " + ",".join(REGIMES))
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slo-ms", type=float, default=SimConfig.slo_ms, help="latency target of one request")
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown report here (PNGs beside it)")
    parser.add_argument("--policy", default=None, help="controller policy .npz (default: the packaged one)")


def grid_from_args(args: argparse.Namespace) -> GridConfig:
    nodes = args.nodes if args.nodes is not None else (2 if args.quick else 32)
    duration = args.duration if args.duration is not None else (8.0 if args.quick else SimConfig.duration_s)
    warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else SimConfig.warmup_s)
    sim = SimConfig(nodes=nodes, duration_s=duration, warmup_s=warmup, seed=args.seed, slo_ms=args.slo_ms)
    if args.quick:  # one short burst inside the short trace
        sim = dataclasses.replace(sim, burst_every_s=10.0, burst_len_s=2.0)
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
