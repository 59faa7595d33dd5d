"""`python -m helmrec.load.sim.replay`: the simulator's KV hit rates against an exact replay of the same trace.

The node simulator (`helmrec.allocator.node_model.build_table`) estimates KV hit rates with Che's
characteristic-time approximation, and the policy learns from them, the two
counterfactual fields included. This is the slower exact mode that checks it:
every request of a trace goes through the KV rule the real pool runs
(`helmrec.load.sim.node.NodePool`: one entry per user in pages, LRU eviction, a
`KVGhost` for the neighbouring sizes) at a fixed alpha, and the hit rates it
*measures* (`kv_hit_rate`, `kv_hit_rate_more`, `kv_hit_rate_less`) are
compared, window by window over the simulator's lookback, with the table's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from helmrec.allocator.node_model import NodeConfig, WindowTable, build_table
from helmrec.allocator.observation import COUNTERFACTUAL_SHARE
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.node import NodePool
from helmrec.workload.traces import REGIMES, Trace, make_trace

FIELDS = ("kv_hit_rate", "kv_hit_rate_more", "kv_hit_rate_less")


def replay_kv(trace: Trace, alpha: float, node: NodeConfig = NodeConfig()) -> np.ndarray:
    """[requests, 3] bool: hit, would hit with a tenth of the pool more KV, with a tenth less."""
    pool = NodePool(SimConfig(nodes=1, node=node), trace.items, alpha)
    flags = np.zeros((len(trace), 3), dtype=bool)
    for i, (user, length) in enumerate(zip(trace.user_id.tolist(), trace.history_len.tolist())):
        reused, more, less = pool.kv_serve(user, length)
        flags[i] = (reused > 0, more, less)
    return flags


def compare(
    trace: Trace, table: WindowTable, alpha: float, flags: np.ndarray, node: NodeConfig = NodeConfig()
) -> dict[str, dict[str, float]]:
    """Per field: mean |table - replay| and mean (table - replay) over the table's windows."""
    simulated = np.array(
        [
            [table.at(w, alpha + d)[1] for d in (0.0, -COUNTERFACTUAL_SHARE, COUNTERFACTUAL_SHARE)]
            for w in range(table.num_windows)
        ]
    )
    measured = np.zeros_like(simulated)
    for w, t0 in enumerate(table.t0_s):
        t1 = t0 + node.interval_s
        measured[w] = flags[trace.window(t1 - node.lookback_s, t1)].mean(axis=0)
    error = simulated - measured
    return {
        field: {
            "mean_abs_error": float(np.abs(error[:, k]).mean()),
            "bias": float(error[:, k].mean()),
            "replay_mean": float(measured[:, k].mean()),
        }
        for k, field in enumerate(FIELDS)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=100, help="trace seed (default: the first held-out seed)")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--alphas", default="0.3,0.5,0.7")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report: dict[str, dict[str, dict]] = {}
    print(f"{'regime':8s}{'alpha':>7s}" + "".join(f"{f + ' |err|':>24s}{'bias':>9s}" for f in FIELDS))
    for regime in REGIMES:
        trace = make_trace(regime, args.seed, duration_s=args.duration)
        table = build_table(trace)
        for alpha in (float(a) for a in args.alphas.split(",")):
            result = compare(trace, table, alpha, replay_kv(trace, alpha))
            report.setdefault(regime, {})[f"{alpha:.2f}"] = result
            print(
                f"{regime:8s}{alpha:7.2f}"
                + "".join(f"{result[f]['mean_abs_error']:24.4f}{result[f]['bias']:+9.4f}" for f in FIELDS)
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
