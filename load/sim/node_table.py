"""Window tables replayed by the cluster simulator's own node: what PPO trains on and alpha* is read from.

For every alpha of a sweep, one `SimNode` (the node `helmrec sim` runs: the
pool's LRU, ghost and EMB rules, the cost model's service times and a FIFO
server) serves every request of a node trace at that alpha held fixed. Each
control window then records what the node reports over the trailing lookback
(the contract of `Observation`: rates over `KV_LOOKBACK_S`): EMB row hit rate,
KV request hit rate, mean service time, P99 latency (queueing included), and
the requests waiting at the window's close. Between sweep points the table is
linear in alpha, on `node_model.ALPHA_GRID`.

Why replay rather than the analytic table (`node_model.build_table`, Che's
approximation and an M/G/1 tail): the controller used to learn in one model
and be judged in another, and alpha* was the analytic model's optimum, not the
replay's (docs/sim.md). With this table the controller trains and is judged
in the model the cluster replay runs, and `oracle.alpha_star` on it is the
replay's own optimum, found by sweeping alpha on the same requests.

What a static sweep cannot show: the transient of moving alpha (a grown KV
side fills lazily, a grown EMB side at the refill cap). The closed-loop
cluster replay (`cluster.simulate`) has it; the table charges each window the
steady state of its alpha.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence

import numpy as np

from helmrec.allocator.node_model import ALPHA_GRID, NodeConfig, WindowTable, window_traffic
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.node import SimNode
from helmrec.workload.traces import REGIMES, Trace, make_trace

# 0.02 .. 0.98 in steps of 0.04: the node's alpha range (NodeConfig.alpha_min/max) at 25 points.
SWEEP_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.round(np.arange(0.02, 0.9801, 0.04), 2))
_FIELDS = ("emb_hit", "kv_hit", "mean_service_us", "p99_ms", "queue_depth")


def regime_trace(regime: str, nodes: int, sim: SimConfig, seed: int | None = None, duration_s: float | None = None) -> Trace:
    """The regime's standard trace scaled to `nodes` (each node gets one node's default load), with the
    sim's burst timing; `seed` and `duration_s` default to the sim's."""
    return make_trace(
        regime,
        seed=sim.seed if seed is None else seed,
        scale=float(nodes),
        workload=sim.workload,
        duration_s=sim.duration_s if duration_s is None else duration_s,
        burst_every_s=sim.burst_every_s,
        burst_len_s=sim.burst_len_s,
        burst_start_s=sim.burst_start_s,
    )


def replay_alpha(trace: Trace, sim: SimConfig, node: NodeConfig, closes: list[float], alpha: float) -> dict[str, np.ndarray]:
    """One node serving all of `trace` at `alpha`: the five columns ([W] each) of the windows closing at `closes`."""
    server = SimNode(sim, trace.items, trace.config.candidates, alpha)
    n = len(trace)
    latency = np.empty(n)
    service = np.empty(n)
    hit = np.empty(n, dtype=bool)
    lookups = np.empty(n)
    emb_hits = np.empty(n)
    queue = np.zeros(len(closes))
    k = 0
    for i, (t, user, length) in enumerate(zip(trace.t_s.tolist(), trace.user_id.tolist(), trace.history_len.tolist())):
        while k < len(closes) and t >= closes[k]:
            queue[k] = server.observation(closes[k], node.interval_s).queue_depth  # also resets its window
            k += 1
        start = t if t > server.free_at else server.free_at
        done, hit[i], lookups[i], hit_p = server.serve(t, user, length)
        latency[i] = done - t
        service[i] = done - start
        emb_hits[i] = lookups[i] * hit_p
    for rest in range(k, len(closes)):
        queue[rest] = server.observation(closes[rest], node.interval_s).queue_depth
    out = {f: np.zeros(len(closes)) for f in _FIELDS}
    out["queue_depth"] = queue
    for w, t1 in enumerate(closes):
        lb = trace.window(t1 - node.lookback_s, t1)
        if lb.stop == lb.start:
            continue
        out["emb_hit"][w] = emb_hits[lb].sum() / max(lookups[lb].sum(), 1e-9)
        out["kv_hit"][w] = hit[lb].mean()
        out["mean_service_us"][w] = service[lb].mean() * 1e6
        out["p99_ms"][w] = np.percentile(latency[lb], 99) * 1e3
    return out


def _replay_task(args: tuple[Trace, SimConfig, NodeConfig, list[float], float]) -> dict[str, np.ndarray]:
    return replay_alpha(*args)


def replay_table(
    trace: Trace,
    sim: SimConfig,
    node: NodeConfig | None = None,
    alphas: Sequence[float] = SWEEP_ALPHAS,
    workers: int = 1,
) -> WindowTable:
    """The window table of `trace` replayed at every alpha of `alphas` (see the module docstring).

    `node` sets the windows (interval, warm-up, lookback); by default `sim.node`. Node physics
    (pool, pages, refill, costs) always come from `sim`, as in the cluster replay.
    """
    node = sim.node if node is None else node
    sweep = sorted(float(a) for a in alphas)
    if len(sweep) < 2 or len(set(sweep)) != len(sweep) or sweep[0] < 0.0 or sweep[-1] > 1.0:
        raise ValueError(f"replay_table: alphas must be >= 2 distinct values in [0, 1], got {list(alphas)}")
    traffic = window_traffic(trace, node)  # the windows are alpha-free: computed once for the sweep
    closes = (traffic.t0_s + node.interval_s).tolist()
    tasks = [(trace, sim, node, closes, a) for a in sweep]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            columns = pool.map(_replay_task, tasks)
    else:
        columns = [_replay_task(t) for t in tasks]
    grid = {f: np.stack([c[f] for c in columns], axis=1) for f in _FIELDS}  # [W, len(sweep)]
    on_grid = {
        f: np.stack([np.interp(ALPHA_GRID, sweep, row) for row in values]) if values.size else np.zeros((0, ALPHA_GRID.size))
        for f, values in grid.items()
    }
    return traffic.table(trace.config.regime, node.interval_s, **on_grid)


def regime_tables(
    seeds: Sequence[int],
    duration_s: float,
    sim: SimConfig,
    node: NodeConfig | None = None,
    workers: int = 1,
    regimes: Sequence[str] = REGIMES,
) -> dict[str, list[WindowTable]]:
    """Replayed tables of one node's share of each regime's trace on `seeds` (`regime_trace` at one node)."""
    return {
        regime: [replay_table(regime_trace(regime, 1, sim, seed=seed, duration_s=duration_s), sim, node, workers=workers)
                 for seed in seeds]
        for regime in regimes
    }
