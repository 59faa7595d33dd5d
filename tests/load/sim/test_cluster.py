"""The cluster loop routes every request with the real policies and lets the real controller move alpha."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from helmrec.allocator.controller import Controller, ControllerConfig
from helmrec.allocator.observation import FEATURE_SCALE, FEATURE_SHIFT, OBS_DIM, Observation
from helmrec.allocator.policy import Policy
from helmrec.load.sim.alpha_gap import alpha_gap, node_trace
from helmrec.load.sim.cluster import RunResult, simulate
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.metrics import summarize
from helmrec.workload.traces import make_trace

CONFIG = SimConfig(nodes=3, duration_s=5.0, warmup_s=2.0)


class Fixed:
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def decide(self, obs: Observation) -> float:
        return self.alpha


def write_policy(path: Path, action: float) -> Path:
    """A real policy file whose actor ignores its input and outputs `action` (a known target)."""
    h = 4
    np.savez(
        path,
        w1=np.zeros((h, OBS_DIM)), b1=np.zeros(h), w2=np.zeros((h, h)), b2=np.zeros(h),
        w3=np.zeros((1, h)), b3=np.array([action]),
        feature_shift=FEATURE_SHIFT, feature_scale=FEATURE_SCALE,
        alpha_range=np.array([0.02, 0.98]), meta_burst_alpha=np.array(0.25),
    )
    return path


@pytest.fixture(scope="module")
def trace():
    return make_trace("steady", seed=5, scale=CONFIG.nodes, duration_s=CONFIG.duration_s)


@pytest.fixture(scope="module")
def runs(trace):
    return {router: simulate(trace, CONFIG, router, lambda: Fixed(0.5)) for router in ("round_robin", "helm")}


def test_the_served_path_adds_its_time_to_every_latency_and_nothing_else(trace, runs) -> None:
    """`path_ms` (a benchmark's probe of gRPC, router and ensemble) is outside the node's queue:
    the same placements, completions and caches, every latency longer by exactly that."""
    res = simulate(trace, dataclasses.replace(CONFIG, path_ms=4.0), "round_robin", lambda: Fixed(0.5))
    base = runs["round_robin"]
    np.testing.assert_array_equal(res.node, base.node)
    np.testing.assert_array_equal(res.done_s, base.done_s)
    np.testing.assert_array_equal(res.kv_hit, base.kv_hit)
    np.testing.assert_allclose(res.latency_ms - base.latency_ms, 4.0)
    with pytest.raises(ValueError, match="SimConfig.path_ms must be >= 0"):
        dataclasses.replace(CONFIG, path_ms=-1.0)


def test_every_request_is_served_once_in_fifo_order_per_node(trace, runs) -> None:
    res = runs["round_robin"]
    assert np.all(res.node >= 0)  # no overload at this load
    assert np.bincount(res.node, minlength=3).min() > len(trace) // 4  # round robin spreads evenly
    for j in range(CONFIG.nodes):
        done = res.done_s[res.node == j]
        assert np.all(np.diff(done) > 0)  # one server per node, arrivals served in order
    assert np.all(res.latency_ms > 0)
    np.testing.assert_allclose(res.done_s - trace.t_s, res.latency_ms / 1e3)


def test_helm_keeps_users_where_their_prefix_is(trace, runs) -> None:
    rr, helm = summarize(runs["round_robin"], trace, CONFIG), summarize(runs["helm"], trace, CONFIG)
    assert helm["kv_hit"] > rr["kv_hit"] + 0.05
    for figures in (rr, helm):
        assert 0.0 <= figures["emb_hit"] <= 1.0 and 0.0 < figures["slo_satisfaction"] <= 1.0
        assert figures["p50_ms"] <= figures["p99_ms"]


def test_controller_moves_alpha_toward_its_target_by_bounded_steps(trace, tmp_path) -> None:
    policy = Policy.load(write_policy(tmp_path / "p.npz", action=0.8))  # target 0.02 + 0.9 * 0.96 = 0.884
    config = ControllerConfig(layers="ppo")
    res = simulate(trace, CONFIG, "helm", lambda: Controller(policy, config))
    assert np.all(res.alpha[0] == CONFIG.start_alpha)
    steps = np.diff(res.alpha, axis=0)
    assert np.all(steps >= 0) and np.all(steps <= config.max_step + 1e-12)
    np.testing.assert_allclose(res.alpha[-1], 0.02 + 0.9 * 0.96)  # reached the policy's target
    gap, star = alpha_gap(trace, res, CONFIG)
    assert star.shape == (CONFIG.windows, CONFIG.nodes) and 0.0 <= gap <= 1.0


def test_node_trace_recomputes_previous_visits_within_the_node(trace) -> None:
    whole = node_trace(trace, np.arange(len(trace)))
    np.testing.assert_array_equal(whole.prev_len, trace.prev_len)
    np.testing.assert_allclose(whole.since_prev_s, trace.since_prev_s)
    odd = node_trace(trace, np.arange(1, len(trace), 2))
    assert np.isinf(odd.since_prev_s).sum() >= np.isinf(trace.since_prev_s[1::2]).sum()


def test_refused_requests_count_as_slo_misses_not_throughput(trace) -> None:
    n = len(trace)
    latency = np.full(n, 1.0)
    latency[::2] = np.nan  # every other request refused
    done = np.where(np.isnan(latency), np.inf, trace.t_s + 1e-3)
    res = RunResult(latency, np.where(np.isnan(latency), -1, 0).astype(np.int32), np.zeros(n, bool),
                    np.ones(n, np.float32), np.ones(n, np.float32), done, np.zeros((5, 3)), 0.0)
    figures = summarize(res, trace, CONFIG)
    assert figures["slo_satisfaction"] == pytest.approx(0.5, abs=0.01)
    measured_rate = np.count_nonzero(trace.t_s >= CONFIG.warmup_s) / (CONFIG.duration_s - CONFIG.warmup_s)
    assert figures["throughput_rps"] == pytest.approx(measured_rate / 2, rel=0.02)
    assert figures["emb_hit"] == 1.0 and figures["p99_ms"] == 1.0
