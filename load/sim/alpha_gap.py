"""How far each node's alpha was from the offline-optimal alpha* of the traffic it actually received.

alpha* is the replay's own optimum: the sub-trace the router sent to a node is
replayed through the same node at every alpha of a sweep
(`helmrec.load.sim.node_table.replay_table`) and `helmrec.allocator.oracle.alpha_star`
reads the best one per window, the definition `helmrec eval-allocator` reports.
Per node, because a node only sees a user's previous request if it was routed
there too, so the KV reuse a node can get (and hence its alpha*) depends on the
routing policy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from helmrec.allocator.oracle import alpha_star
from helmrec.load.sim.cluster import RunResult
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.node_table import replay_table
from helmrec.workload.traces import Trace


def node_trace(trace: Trace, rows: np.ndarray) -> Trace:
    """The sub-trace of `rows` (time-ordered indices) with prev_len/since_prev_s recomputed within it."""
    t = trace.t_s[rows]
    users = trace.user_id[rows]
    hist = trace.history_len[rows]
    n = rows.shape[0]
    order = np.argsort(users, kind="stable")  # per user, time order kept
    prev_sorted = np.full(n, -1, dtype=np.int64)
    if n > 1:
        same = users[order][1:] == users[order][:-1]
        prev_sorted[1:] = np.where(same, order[:-1], -1)
    prev = np.empty(n, dtype=np.int64)
    prev[order] = prev_sorted
    has_prev = prev >= 0
    safe = np.maximum(prev, 0)
    return dataclasses.replace(
        trace,
        t_s=t,
        user_id=users,
        history_len=hist,
        prev_len=np.where(has_prev, hist[safe], 0).astype(np.int32),
        since_prev_s=np.where(has_prev, t - t[safe], np.inf),
    )


def alpha_star_per_node(trace: Trace, result: RunResult, config: SimConfig) -> np.ndarray:
    """alpha* [measured windows, nodes] of each node's routed traffic."""
    node = dataclasses.replace(config.node, warmup_s=config.warmup_s, interval_s=config.interval_s)
    one = dataclasses.replace(config, nodes=1)
    columns = []
    for j in range(config.nodes):
        table = replay_table(node_trace(trace, np.flatnonzero(result.node == j)), one, node)
        columns.append(alpha_star(table, node))
    return np.stack(columns, axis=1)


def alpha_gap(trace: Trace, result: RunResult, config: SimConfig) -> tuple[float, np.ndarray]:
    """Mean |alpha - alpha*| over nodes and measured windows, and alpha* itself."""
    star = alpha_star_per_node(trace, result, config)
    first = int(round(config.warmup_s / config.interval_s))
    chosen = result.alpha[first : first + star.shape[0]]
    return float(np.abs(chosen - star[: chosen.shape[0]]).mean()), star
