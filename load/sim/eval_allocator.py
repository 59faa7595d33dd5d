"""`helmrec eval-allocator`: alpha controllers against alpha* on held-out seeds of the replayed node.

Tables come from `node_table.regime_tables` (the cluster simulator's node at
every alpha of a sweep), so alpha* is the replay's own optimum on the same
requests; `helmrec.allocator.evaluate` steps every controller through them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from helmrec.allocator.evaluate import EVAL_SEEDS, evaluate, format_table
from helmrec.allocator.policy import Policy
from helmrec.load.sim.config import workload_sim
from helmrec.load.sim.node_table import regime_tables
from helmrec.workload.traces import WORKLOADS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="production", help="trace and node sizing")
    parser.add_argument("--quick", action="store_true", help="one held-out seed, 300 s traces (CI)")
    parser.add_argument("--json", type=Path, required=True, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of alpha vs alpha* over time")
    parser.add_argument("--policy", type=Path, default=None, help="policy .npz (default: the packaged one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes replaying the alpha sweep")
    parser.add_argument(
        "--emb-miss-scale",
        type=float,
        default=1.0,
        help="evaluate on a node whose EMB miss costs this many times the trained-on cost model's "
        "(a sim-to-real mismatch the policy never saw; what the residual layer is for)",
    )


def run(args: argparse.Namespace) -> int:
    seeds = EVAL_SEEDS[:1] if args.quick else EVAL_SEEDS
    duration = 300.0 if args.quick else 600.0
    if args.emb_miss_scale <= 0:
        raise SystemExit(f"--emb-miss-scale must be > 0, got {args.emb_miss_scale}")
    sim = workload_sim(args.workload, nodes=1)
    cost = dataclasses.replace(sim.node.cost, emb_miss_row_us=sim.node.cost.emb_miss_row_us * args.emb_miss_scale)
    sim = dataclasses.replace(sim, node=dataclasses.replace(sim.node, cost=cost))
    tables = regime_tables(seeds, duration, sim, workers=args.workers)
    report = evaluate(Policy.load(args.policy), tables, node=sim.node, plot=args.plot)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    wrote = f"{args.json}" + (f" and {args.plot}" if args.plot else "")
    print(f"seeds {list(seeds)}, {duration:.0f} s per trace, emb miss cost x{args.emb_miss_scale}; wrote {wrote}")
    return 0
