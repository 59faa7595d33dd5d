"""Residual adapter stays bounded and learns the slope's sign; the burst detector fires on bursts only."""

from __future__ import annotations

import numpy as np
import pytest

from helmrec.allocator.burst import BurstConfig, BurstDetector
from helmrec.allocator.node_model import NodeConfig, build_table
from helmrec.allocator.residual import ResidualAdapter, ResidualConfig
from helmrec.workload.traces import make_trace


def test_residual_bounded_under_adversarial_latency() -> None:
    cfg = ResidualConfig(bound=0.05, step=0.01, min_pairs=2, z=0.1)
    adapter = ResidualAdapter(cfg)
    rng = np.random.default_rng(0)
    for _ in range(5000):
        out = adapter.update(float(rng.choice([0.1, 1000.0])))
        assert abs(out) <= cfg.bound + cfg.probe + 1e-12
        assert abs(adapter.offset) <= cfg.bound + 1e-12


def test_residual_follows_the_latency_slope_and_ignores_flat_noise() -> None:
    """On a noisy P99 = 5 + 100 (alpha - 0.3)^2 from base 0.4 it walks to the bound; on pure noise it stays at 0."""
    rng = np.random.default_rng(2)
    adapter = ResidualAdapter(ResidualConfig(bound=0.1, step=0.01, probe_every=4))
    p99 = 5.0
    for _ in range(4000):
        alpha = 0.4 + adapter.update(p99)
        p99 = (5.0 + 100.0 * (alpha - 0.3) ** 2) * (1.0 + 0.01 * rng.standard_normal())
    assert adapter.offset == pytest.approx(-0.1, abs=0.02)
    quiet = ResidualAdapter(ResidualConfig(probe_every=4))
    for _ in range(4000):
        quiet.update(5.0 * (1.0 + 0.01 * rng.standard_normal()))
    assert abs(quiet.offset) <= 0.01 and quiet.steps <= 1


def _signals(regime: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observation signals of the last 160 s of a standard 600 s trace (realistic drift speed)."""
    trace = make_trace(regime, seed=11, duration_s=600.0, burst_every_s=70.0, burst_len_s=15.0)
    table = build_table(trace, NodeConfig(warmup_s=440.0, sample_requests=1000))
    in_burst = trace.config.in_burst(table.t0_s + 0.5)
    return table.hot_user_share, table.requests / table.interval_s, in_burst


def test_burst_detector_fires_on_bursts_and_hands_back() -> None:
    hot, rate, truth = _signals("burst")
    det = BurstDetector(BurstConfig())
    flags = np.array([det.update(float(h), float(r)) for h, r in zip(hot, rate)])
    starts = np.flatnonzero(np.diff(truth.astype(int)) == 1) + 1
    assert len(starts) >= 2 and det.bursts == len(starts)
    for s in starts:
        assert flags[s : s + 2].any(), "burst must be seen within two intervals of its start"
    ends = np.flatnonzero(np.diff(truth.astype(int)) == -1) + 1
    for e in ends[ends + 20 <= len(truth)]:
        assert not flags[e + 8 : e + 20].any(), "control must be handed back after the burst"


def test_burst_detector_quiet_on_steady_and_trend() -> None:
    for regime in ("steady", "trend"):
        hot, rate, _ = _signals(regime)
        det = BurstDetector(BurstConfig())
        flags = [det.update(float(h), float(r)) for h, r in zip(hot, rate)]
        assert not any(flags), f"false alarm on {regime}"


def test_bound_fits_every_signal_set_and_scores_held_out_regimes() -> None:
    """`python -m helmrec.allocator.bound` on short traces: a held-out gap per signal set and regime."""
    from helmrec.allocator.bound import SIGNALS, bound
    from helmrec.allocator.policy import Policy
    from helmrec.workload.traces import REGIMES

    report = bound(duration_s=170.0, train_seeds=(0,), test_seeds=(100,), epochs=30, policy=Policy.load())
    assert set(report) == set(SIGNALS)
    for gaps in report.values():
        assert set(gaps) == set(REGIMES)
        assert all(0.0 <= g < 1.0 for g in gaps.values())
