"""Replayed window tables: the cluster replay's own node at each alpha, and alpha* as the replay's optimum."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helmrec.allocator.node_model import ALPHA_GRID, NodeConfig, NodeState, step_node
from helmrec.allocator.observation import Observation
from helmrec.allocator.oracle import alpha_star
from helmrec.load.sim.cluster import simulate
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.node_table import replay_table
from helmrec.workload.traces import make_trace

SIM = SimConfig(nodes=1, duration_s=40.0, warmup_s=10.0, node=NodeConfig(warmup_s=10.0, pool_bytes=400_000_000))
SWEEP = (0.1, 0.3, 0.5, 0.7, 0.9)


class Fixed:
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def decide(self, obs: Observation) -> float:
        return self.alpha


@pytest.fixture(scope="module")
def trace():
    return make_trace("burst", seed=3, scale=0.2, duration_s=SIM.duration_s, burst_every_s=30.0, burst_len_s=8.0)


@pytest.fixture(scope="module")
def table(trace):
    return replay_table(trace, SIM, alphas=SWEEP)


def test_table_is_the_cluster_replay_at_a_static_alpha(trace, table) -> None:
    """The one-node cluster replay at alpha 0.3 and the table's 0.3 column see the same latencies."""
    node = SIM.node
    result = simulate(trace, dataclasses.replace(SIM, start_alpha=0.3), "round_robin", lambda: Fixed(0.3))
    column = int(np.flatnonzero(np.isclose(ALPHA_GRID, 0.3))[0])
    assert table.num_windows == int((SIM.duration_s - node.warmup_s) // node.interval_s)
    for w, t0 in enumerate(table.t0_s):
        t1 = t0 + node.interval_s
        lookback = trace.window(t1 - node.lookback_s, t1)
        assert table.p99_ms[w, column] == pytest.approx(np.percentile(result.latency_ms[lookback], 99), rel=1e-9)
        assert table.kv_hit[w, column] == pytest.approx(result.kv_hit[lookback].mean(), abs=1e-12)
        lookups = result.emb_lookups[lookback].astype(np.float64)
        assert table.emb_hit[w, column] == pytest.approx(result.emb_hits[lookback].sum() / lookups.sum(), rel=1e-5)


def test_caches_answer_to_alpha(table) -> None:
    """More EMB share: more EMB hits and fewer KV hits, window by window (the sweep is real)."""
    lo, hi = (int(np.flatnonzero(np.isclose(ALPHA_GRID, a))[0]) for a in (0.1, 0.9))
    assert (table.emb_hit[:, hi] >= table.emb_hit[:, lo]).all()
    assert (table.kv_hit[:, hi] <= table.kv_hit[:, lo] + 1e-12).all()
    assert table.kv_hit[:, lo].mean() > table.kv_hit[:, hi].mean()


def test_alpha_star_is_the_replays_optimum(table) -> None:
    """alpha* lies inside the node's range and its replayed P99 is within 2% of the sweep's best."""
    star = alpha_star(table, SIM.node)
    assert ((star >= SIM.node.alpha_min) & (star <= SIM.node.alpha_max)).all()
    sweep_cols = [int(np.flatnonzero(np.isclose(ALPHA_GRID, a))[0]) for a in SWEEP]
    best = table.p99_ms[:, sweep_cols].min(axis=1)
    at_star = np.array([table.at(w, a)[3] for w, a in enumerate(star)])
    assert (at_star <= best * 1.02 + 1e-9).all()


def test_step_node_reads_the_replayed_queue(table) -> None:
    """A replayed table carries its queue: step_node adds no backlog of its own."""
    state = NodeState(alpha=0.5)
    for w in range(table.num_windows):
        obs = step_node(table, w, state)
        assert obs.p99_ms == pytest.approx(table.at(w, 0.5)[3])
        assert obs.queue_depth == pytest.approx(table.queue_at(w, 0.5))
    assert state.backlog_us == 0.0


def test_rejects_a_degenerate_sweep(trace) -> None:
    with pytest.raises(ValueError, match="alphas"):
        replay_table(trace, SIM, alphas=(0.5,))
    with pytest.raises(ValueError, match="alphas"):
        replay_table(trace, SIM, alphas=(0.2, 1.2))
