"""Traces are reproducible, columnar, and carry growing per-user histories (KV prefixes are reusable)."""

from __future__ import annotations

import numpy as np
import pytest

from helmrec.workload.traces import FIRST_ITEM_ID, REGIMES, TraceConfig, make_trace


@pytest.mark.parametrize("regime", REGIMES)
def test_same_seed_same_trace_other_seed_differs(regime: str) -> None:
    a = make_trace(regime, seed=3, duration_s=30.0)
    b = make_trace(regime, seed=3, duration_s=30.0)
    c = make_trace(regime, seed=4, duration_s=30.0)
    for name in ("t_s", "user_id", "history_len", "prev_len", "since_prev_s"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.history_ids(7), b.history_ids(7))
    np.testing.assert_array_equal(a.candidate_ids(7), b.candidate_ids(7))
    assert len(a) != len(c) or not np.array_equal(a.user_id, c.user_id)


def test_returning_user_history_extends_the_previous_one() -> None:
    tr = make_trace("trend", seed=1, duration_s=60.0)
    assert np.all(np.diff(tr.t_s) >= 0)
    returning = np.flatnonzero(np.isfinite(tr.since_prev_s))
    assert returning.size > len(tr) // 4
    assert np.all(tr.history_len[returning] >= tr.prev_len[returning])
    # The previous request's history is a prefix of this one, ids and timestamps alike.
    i = int(returning[-1])
    j = int(np.flatnonzero((tr.user_id == tr.user_id[i]) & (tr.t_s < tr.t_s[i]))[-1])
    assert tr.prev_len[i] == tr.history_len[j]
    np.testing.assert_array_equal(tr.history_ids(i)[: tr.prev_len[i]], tr.history_ids(j))
    np.testing.assert_array_equal(tr.history_timestamps(i)[: tr.prev_len[i]], tr.history_timestamps(j))
    assert tr.history_timestamps(i)[-1] < tr.request_timestamp(j)


def test_ids_in_range_and_items_are_zipf_skewed() -> None:
    tr = make_trace("steady", seed=0, duration_s=20.0)
    assert tr.user_id.min() >= 0 and tr.user_id.max() < tr.config.num_users
    cands = np.concatenate([tr.candidate_ids(i) for i in range(200)])
    assert cands.min() >= FIRST_ITEM_ID and cands.max() < tr.config.num_items
    assert cands.shape == (200 * tr.config.candidates,)
    ranks = tr.item_rank(cands)
    # Under Zipf(0.7) over 5M items, the top 1% of items draw far more than 1% of lookups.
    assert (ranks < tr.config.num_items // 100).mean() > 0.1


def test_burst_raises_rate_and_hot_share_trend_drifts() -> None:
    tr = make_trace("burst", seed=2, duration_s=130.0)
    cfg = tr.config
    inside = cfg.in_burst(tr.t_s)
    assert inside.any() and (~inside).any()
    rate_in = inside.sum() / cfg.burst_len_s
    rate_out = (~inside).sum() / (cfg.duration_s - cfg.burst_len_s)
    assert rate_in > 1.15 * rate_out
    tr2 = make_trace("trend", seed=2, duration_s=100.0, trend_period_s=100.0)
    assert tr2.config.hot_share_at(np.array([99.0]))[0] > tr2.config.hot_share_at(np.array([1.0]))[0] + 0.3


def test_millions_of_requests_generate() -> None:
    tr = make_trace("steady", seed=0, duration_s=700.0)
    assert len(tr) > 1_000_000


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="hot_user_share"):
        TraceConfig(hot_user_share=1.5)
    with pytest.raises(ValueError, match="regime"):
        TraceConfig(regime="spiky")
