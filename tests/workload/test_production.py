"""The production workload: DLRMv3 sizes, growing capped histories, returning users, bursts after a lead-in."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helmrec.allocator.observation import KV_LOOKBACK_S
from helmrec.workload import production as prod
from helmrec.workload.reuse import LARGE_KV_TOKEN_BYTES, returning_share, working_set_bytes
from helmrec.workload.traces import FIRST_ITEM_ID, PAPER, PRODUCTION, REGIMES, TraceConfig, make_trace, regime_config


@pytest.fixture(scope="module")
def traces() -> dict[str, object]:
    return {regime: make_trace(regime, seed=4, workload="production") for regime in REGIMES}


def test_presets_by_name_and_paper_is_the_default() -> None:
    assert regime_config("steady", 0) == dataclasses.replace(PAPER, seed=0)
    cfg = regime_config("burst", 2, scale=32.0, workload="production")
    assert cfg.num_items - FIRST_ITEM_ID >= 50_000_000 and cfg.candidates == 2048 and cfg.max_history_len == 14_000
    assert cfg.num_users == 32 * PRODUCTION.num_users and cfg.arrival_rate == pytest.approx(32 * PRODUCTION.arrival_rate)
    with pytest.raises(ValueError, match="workload must be one of"):
        regime_config("steady", 0, workload="huge")


def test_histories_only_grow_and_respect_the_cap(traces: dict) -> None:
    for regime, tr in traces.items():
        returning = np.isfinite(tr.since_prev_s)
        assert np.all(tr.history_len[returning] >= tr.prev_len[returning]), regime
        assert tr.history_len.min() >= 1 and tr.history_len.max() == tr.config.max_history_len, regime
    steady = traces["steady"]
    # DLRMv3's mean (6,400) before the 14k cap; about 9% of requests sit at the cap.
    assert 5000 < steady.history_len.mean() < prod.DLRMV3_MEAN_HISTORY_LEN
    assert 0.03 < (steady.history_len == prod.DLRMV3_MAX_HISTORY_LEN).mean() < 0.2
    assert np.percentile(steady.history_len, 10) < 2000  # a spread, not one length


def test_bursts_outlast_the_lookback_after_a_calm_lead_in(traces: dict) -> None:
    cfg = traces["burst"].config
    t = np.arange(0.0, cfg.duration_s, 0.1)
    inside = cfg.in_burst(t)
    starts = t[1:][inside[1:] & ~inside[:-1]]
    assert starts.size >= 2 and starts[0] >= 60.0 - 1e-9
    assert cfg.burst_len_s >= KV_LOOKBACK_S
    tr = traces["burst"]
    rate_in = cfg.in_burst(tr.t_s).sum() / (inside.mean() * cfg.duration_s)
    rate_lead_in = (tr.t_s < starts[0]).sum() / starts[0]
    assert rate_in > 1.2 * rate_lead_in


def test_users_come_back_within_a_session(traces: dict) -> None:
    tr = traces["steady"]
    # Most requests after the first minute come from a user seen less than a minute before ...
    assert returning_share(tr, 60.0, since_s=60.0) > 0.8
    assert returning_share(tr, 10.0, since_s=60.0) > 0.3
    # ... and those users' KV is about one pool's worth: reuse is real and contended.
    ws_60 = working_set_bytes(tr, 60.0, LARGE_KV_TOKEN_BYTES, since_s=60.0)
    assert 40 * 2**30 < ws_60 < 400 * 2**30
    without = make_trace("steady", seed=4, workload="production", session_return_share=0.0)
    assert returning_share(without, 60.0, since_s=60.0) < returning_share(tr, 60.0, since_s=60.0) - 0.2


def test_ids_reproducible_and_in_range(traces: dict) -> None:
    tr = traces["trend"]
    again = make_trace("trend", seed=4, workload="production")
    for name in ("t_s", "user_id", "history_len", "prev_len", "since_prev_s"):
        np.testing.assert_array_equal(getattr(tr, name), getattr(again, name))
    i = int(np.flatnonzero(np.isfinite(tr.since_prev_s))[-1])
    np.testing.assert_array_equal(tr.history_ids(i), again.history_ids(i))
    np.testing.assert_array_equal(tr.candidate_ids(i), again.candidate_ids(i))
    cands = tr.candidate_ids(i)
    assert cands.shape == (2048,) and cands.min() >= FIRST_ITEM_ID and cands.max() < tr.config.num_items
    # The previous request's history is a prefix of this one.
    j = int(np.flatnonzero((tr.user_id == tr.user_id[i]) & (tr.t_s < tr.t_s[i]))[-1])
    np.testing.assert_array_equal(tr.history_ids(i)[: tr.prev_len[i]], tr.history_ids(j))
    assert tr.user_id.max() < tr.config.num_users
    assert tr.items.cdf_at(tr.config.num_items) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="items.cdf_at"):
        _ = tr.item_cdf


def test_production_rate_follows_the_measured_costs() -> None:
    assert prod.arrival_rate() == pytest.approx(1e3 * 0.7 / (0.5 * prod.H200_RETURNING_MS + 0.5 * prod.H200_FULL_PREFILL_MS))
    assert PRODUCTION.arrival_rate == pytest.approx(prod.arrival_rate())
    assert prod.arrival_rate(kv_hit=1.0) > prod.arrival_rate(kv_hit=0.0)
    with pytest.raises(ValueError, match="utilisation"):
        prod.arrival_rate(utilisation=1.0)


def test_bad_production_fields_name_themselves() -> None:
    with pytest.raises(ValueError, match="history_law"):
        TraceConfig(history_law="pareto")
    with pytest.raises(ValueError, match="session_gap_quantiles_s"):
        TraceConfig(session_return_share=0.5)
    with pytest.raises(ValueError, match="burst_start_s"):
        TraceConfig(burst_start_s=-1.0)
