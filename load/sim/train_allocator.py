"""`helmrec train-allocator`: train the PPO base policy on the replayed node, export numpy weights.

The tables come from `node_table.regime_tables`: the cluster simulator's own
node serves each training trace at every alpha of a sweep, so PPO learns in
the model that `helmrec sim` and `helmrec eval-allocator` judge it in.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from helmrec.allocator.export import export_policy
from helmrec.allocator.policy import DEFAULT_POLICY
from helmrec.allocator.train import TRAIN_SEEDS, fit_constants, train
from helmrec.load.sim.config import workload_sim
from helmrec.load.sim.node_table import regime_tables
from helmrec.workload.traces import WORKLOADS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="production", help="trace and node sizing")
    parser.add_argument("--timesteps", type=int, default=600_000, help="PPO environment steps (default 600000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_POLICY, help=f"numpy policy file (default {DEFAULT_POLICY})")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of each training trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes replaying the alpha sweep")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    sim = workload_sim(args.workload, nodes=1)
    by_regime = regime_tables(TRAIN_SEEDS, args.duration, sim, workers=args.workers)
    tables = [t for regime in by_regime.values() for t in regime]
    windows = sum(t.num_windows for t in tables)
    print(f"replayed {len(tables)} window tables ({windows} windows) in {time.perf_counter() - t0:.1f} s")
    constants = fit_constants(tables, sim.node)
    print("fitted " + ", ".join(f"{k} = {v:.3f}" for k, v in constants.items()))
    model = train(tables, args.timesteps, seed=args.seed, node=sim.node)
    extra = {"meta_timesteps": args.timesteps, "meta_train_seeds": np.array(TRAIN_SEEDS), **constants}
    path = export_policy(model, args.out, extra=extra)
    print(f"exported {path} ({path.stat().st_size} bytes) after {time.perf_counter() - t0:.0f} s")
    return 0
