"""`helmrec sim-map`: where adaptation pays (the paper's Figure 16), on the replayed production node.

For every point of (pool size x hot-user share x mean history length) one node
serves the regime's trace at every alpha of a sweep (`node_table.replay_table`,
the node `helmrec sim` runs). From that table:

- best static alpha: the alpha whose run P99 is lowest (request-weighted mean of
  the windows' P99, the figure `helmrec eval-allocator` reports);
- oracle: alpha* in every window (`oracle.alpha_star`), the most any
  controller could win on this node;
- adaptive: the packaged full controller stepping through the same windows.

Each point's arrival rate is what an operator sizing at 0.7 of the node's grouped
peak would send for that mean history (`config.sized_rate`, the production
workload's own rule): longer histories mean fewer requests per node, not an
overloaded node.

The gain is 1 - P99(adaptive) / P99(best static): positive where adapting
pays. A point where even the oracle's gain is small is one where a static
split is enough, whatever the controller.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np

from helmrec.allocator.controller import Controller, ControllerConfig
from helmrec.allocator.evaluate import replay
from helmrec.allocator.node_model import ALPHA_GRID, WindowTable
from helmrec.allocator.oracle import alpha_star
from helmrec.allocator.policy import Policy
from helmrec.load.sim.config import SimConfig, sized_rate
from helmrec.load.sim.node_table import SWEEP_ALPHAS, replay_table
from helmrec.workload.traces import PRODUCTION, REGIMES, make_trace

GIB = 2**30
POOL_GIB = (28, 56, 112)
HOT_SHARE = (0.1, 0.3, 0.6)
MEAN_HISTORY = (1600, 6400, 12000)


def weighted_p99(table: WindowTable, p99: np.ndarray, first: int = 1) -> float:
    """Request-weighted mean of window P99s over windows `first`.. (the eval-allocator figure)."""
    weights = table.requests[first:].astype(np.float64)
    return float((p99 * weights).sum() / max(weights.sum(), 1.0))


def point(args: tuple[str, int, float, float, int, float, str | None]) -> dict:
    """One map point: best static, oracle and adaptive P99 on one replayed node."""
    regime, pool_gib, hot, history, seed, duration_s, policy_path = args
    sim = SimConfig.production(nodes=1)
    sim = dataclasses.replace(sim, node=dataclasses.replace(sim.node, pool_bytes=pool_gib * GIB))
    rate = sized_rate(sim.node.cost, float(history), PRODUCTION.candidates)
    trace = make_trace(
        regime,
        seed,
        workload="production",
        duration_s=duration_s,
        hot_user_share=hot,
        mean_history_len=float(history),
        arrival_rate=rate,
    )
    table = replay_table(trace, sim)
    columns = [int(np.flatnonzero(np.isclose(ALPHA_GRID, a))[0]) for a in SWEEP_ALPHAS]
    static = {a: weighted_p99(table, table.p99_ms[1:, c]) for a, c in zip(SWEEP_ALPHAS, columns)}
    best_alpha = min(static, key=static.get)
    star = alpha_star(table, sim.node)[1:]
    oracle = weighted_p99(table, np.array([table.at(w, a)[3] for w, a in enumerate(star, start=1)]))
    policy = Policy.load(policy_path)
    _, adaptive_p99, _ = replay(table, Controller(policy, ControllerConfig()))
    adaptive = weighted_p99(table, adaptive_p99)
    return {
        "regime": regime,
        "pool_gib": pool_gib,
        "hot_user_share": hot,
        "mean_history_len": history,
        "arrival_rate": rate,
        "best_static_alpha": best_alpha,
        "best_static_p99_ms": static[best_alpha],
        "oracle_p99_ms": oracle,
        "adaptive_p99_ms": adaptive,
        "oracle_gain": 1.0 - oracle / static[best_alpha],
        "adaptive_gain": 1.0 - adaptive / static[best_alpha],
        "alpha_star_range": [float(star.min()), float(star.max())],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, required=True, help="write the map here")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset of " + ",".join(REGIMES))
    parser.add_argument("--pool-gib", default=",".join(map(str, POOL_GIB)), help="pool sizes (GiB)")
    parser.add_argument("--hot-share", default=",".join(map(str, HOT_SHARE)), help="hot-user shares of requests")
    parser.add_argument("--mean-history", default=",".join(map(str, MEAN_HISTORY)), help="mean history lengths")
    parser.add_argument("--duration", type=float, default=300.0, help="trace seconds per point")
    parser.add_argument("--seed", type=int, default=100, help="trace seed (default: a held-out one)")
    parser.add_argument("--policy", default=None, help="controller policy .npz (default: the packaged one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)


def _numbers(text: str, kind: type) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if not regimes or set(regimes) - set(REGIMES):
        raise SystemExit(f"--regimes must be a subset of {REGIMES}, got {args.regimes!r}")
    tasks = [
        (regime, pool, hot, hist, args.seed, args.duration, args.policy)
        for regime, pool, hot, hist in itertools.product(
            regimes, _numbers(args.pool_gib, int), _numbers(args.hot_share, float), _numbers(args.mean_history, int)
        )
    ]
    with multiprocessing.get_context("fork").Pool(max(1, min(args.workers, len(tasks)))) as pool:
        points = pool.map(point, tasks)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"points": points}, indent=2) + "\n")
    print(f"{'regime':8s}{'pool':>6s}{'hot':>6s}{'hist':>7s}{'best a':>8s}{'static ms':>11s}{'oracle':>9s}{'adaptive':>10s}")
    for p in points:
        print(
            f"{p['regime']:8s}{p['pool_gib']:6d}{p['hot_user_share']:6.2f}{p['mean_history_len']:7d}"
            f"{p['best_static_alpha']:8.2f}{p['best_static_p99_ms']:11.2f}{100 * p['oracle_gain']:+8.1f}%"
            f"{100 * p['adaptive_gain']:+9.1f}%"
        )
    return 0
