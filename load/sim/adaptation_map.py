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
# Every other alpha of the node's sweep (0.02 .. 0.98 by 0.08): 81 points of 13 replays each fit a
# few minutes on two cores; the gains are read between sweep points as eval-allocator does.
MAP_ALPHAS = SWEEP_ALPHAS[::2]
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
    table = replay_table(trace, sim, alphas=MAP_ALPHAS)
    columns = [int(np.flatnonzero(np.isclose(ALPHA_GRID, a))[0]) for a in MAP_ALPHAS]
    static = {a: weighted_p99(table, table.p99_ms[1:, c]) for a, c in zip(MAP_ALPHAS, columns)}
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


def plot_map(points: list[dict], path: Path) -> None:
    """One heatmap per (regime, hot-user share): pool size x mean history, coloured by the oracle's gain,
    each cell labelled with the best static alpha and the controller's gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({p["regime"] for p in points}, key=REGIMES.index)
    hots = sorted({p["hot_user_share"] for p in points})
    pools = sorted({p["pool_gib"] for p in points})
    hists = sorted({p["mean_history_len"] for p in points})
    top = max(0.05, max(p["oracle_gain"] for p in points))
    fig, axes = plt.subplots(len(regimes), len(hots), figsize=(3.6 * len(hots), 2.9 * len(regimes)), squeeze=False)
    for r, regime in enumerate(regimes):
        for h, hot in enumerate(hots):
            ax = axes[r][h]
            gain = np.full((len(pools), len(hists)), np.nan)
            for p in points:
                if p["regime"] == regime and p["hot_user_share"] == hot:
                    i, j = pools.index(p["pool_gib"]), hists.index(p["mean_history_len"])
                    gain[i, j] = p["oracle_gain"]
                    ax.text(j, i, f"a={p['best_static_alpha']:.2f}\n{100 * p['adaptive_gain']:+.1f}%", ha="center",
                            va="center", fontsize=7)
            image = ax.imshow(gain, origin="lower", cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
            ax.set_xticks(range(len(hists)), [str(x) for x in hists], fontsize=7)
            ax.set_yticks(range(len(pools)), [f"{x} GiB" for x in pools], fontsize=7)
            ax.set_title(f"{regime}, hot share {hot:g}", fontsize=8)
            if r == len(regimes) - 1:
                ax.set_xlabel("mean history length", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="oracle P99 gain over best static")
    fig.suptitle("best static alpha and the full controller's P99 gain per cell; colour: the most any controller could win",
                 fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, required=True, help="write the map here")
    parser.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated subset of " + ",".join(REGIMES))
    parser.add_argument("--pool-gib", default=",".join(map(str, POOL_GIB)), help="pool sizes (GiB)")
    parser.add_argument("--hot-share", default=",".join(map(str, HOT_SHARE)), help="hot-user shares of requests")
    parser.add_argument("--mean-history", default=",".join(map(str, MEAN_HISTORY)), help="mean history lengths")
    parser.add_argument("--duration", type=float, default=200.0, help="trace seconds per point (the first 60 warm up)")
    parser.add_argument("--seed", type=int, default=100, help="trace seed (default: a held-out one)")
    parser.add_argument("--policy", default=None, help="controller policy .npz (default: the packaged one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the map (one heatmap per regime and hot share)")


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
    if args.plot is not None:
        plot_map(points, args.plot)
    print(f"{'regime':8s}{'pool':>6s}{'hot':>6s}{'hist':>7s}{'best a':>8s}{'static ms':>11s}{'oracle':>9s}{'adaptive':>10s}")
    for p in points:
        print(
            f"{p['regime']:8s}{p['pool_gib']:6d}{p['hot_user_share']:6.2f}{p['mean_history_len']:7d}"
            f"{p['best_static_alpha']:8.2f}{p['best_static_p99_ms']:11.2f}{100 * p['oracle_gain']:+8.1f}%"
            f"{100 * p['adaptive_gain']:+9.1f}%"
        )
    return 0
