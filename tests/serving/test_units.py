"""Unit tests of the serving glue that runs without Triton: request rules,
the controller's observation of a window, and repository staging."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helmrec import schema
from helmrec.allocator.observation import KVLookback
from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.model_config import get_parameter, set_parameters
from helmrec.pool.stats import PoolStats
from helmrec.serving.node_control import observe

LIMITS = schema.Limits(num_items=100, num_actions=2, max_seq_len=8, max_candidates=4)


def request(**overrides: np.ndarray | None) -> dict[str, np.ndarray | None]:
    base = schema.ensemble_request(3, np.array([1, 2, 3]), np.array([10, 10, 12]), np.array([5, 6]), np.array([0, 1, 1]))
    base.update(overrides)
    return base


def test_valid_request_is_packed_with_its_latest_event_as_query_time() -> None:
    packed = schema.validate(request(), LIMITS)
    assert packed.user_id == 3 and packed.query_ts == 12
    assert packed.hist_actions.dtype == np.int64 and packed.hist_actions.tolist() == [0, 1, 1]
    no_actions = schema.validate(request(**{schema.HISTORY_ACTIONS: None}), LIMITS)
    assert no_actions.hist_actions.tolist() == [0, 0, 0]


def test_a_query_time_is_taken_as_given_and_allows_an_empty_history() -> None:
    given = schema.validate(request(**{schema.QUERY_TIMESTAMP: np.array([99])}), LIMITS)
    assert given.query_ts == 99
    empty = np.zeros(0, np.int64)
    cold = {schema.HISTORY_ITEM_IDS: empty, schema.HISTORY_TIMESTAMPS: empty, schema.HISTORY_ACTIONS: None}
    assert schema.validate(request(**cold, **{schema.QUERY_TIMESTAMP: np.array([99])}), LIMITS).hist_ids.size == 0
    with pytest.raises(schema.RequestError, match="HISTORY_ITEM_IDS: must hold at least one item"):
        schema.validate(request(**cold), LIMITS)


@pytest.mark.parametrize(
    ("overrides", "tensor", "rule"),
    [
        (
            {schema.HISTORY_ITEM_IDS: np.arange(9), schema.HISTORY_TIMESTAMPS: np.arange(9), schema.HISTORY_ACTIONS: None},
            schema.HISTORY_ITEM_IDS,
            "history length 9 exceeds max_seq_len 8",
        ),
        ({schema.HISTORY_ITEM_IDS: np.zeros(0, np.int64)}, schema.HISTORY_ITEM_IDS, "at least one"),
        ({schema.HISTORY_ITEM_IDS: np.array([1.0, 2.0, 3.0])}, schema.HISTORY_ITEM_IDS, "must hold integers"),
        ({schema.HISTORY_ACTIONS: np.array([0, 2, 1])}, schema.HISTORY_ACTIONS, "action ids must lie in [0, 2), got [0, 2]"),
        ({schema.HISTORY_ACTIONS: np.array([0, 1])}, schema.HISTORY_ACTIONS, "must equal"),
        ({schema.HISTORY_TIMESTAMPS: np.array([-5, 1, 2])}, schema.HISTORY_TIMESTAMPS, ">= 0"),
        ({schema.HISTORY_TIMESTAMPS: np.array([5, 4, 6])}, schema.HISTORY_TIMESTAMPS, "non-decreasing"),
        ({schema.USER_ID: np.array([1, 2])}, schema.USER_ID, "exactly one"),
        ({schema.USER_ID: np.array([-1])}, schema.USER_ID, ">= 0"),
        ({schema.QUERY_TIMESTAMP: np.array([1, 2])}, schema.QUERY_TIMESTAMP, "exactly one"),
        ({schema.CANDIDATE_ITEM_IDS: np.array([[1]])}, schema.CANDIDATE_ITEM_IDS, "1-D"),
        ({schema.CANDIDATE_ITEM_IDS: np.zeros(0, np.int64)}, schema.CANDIDATE_ITEM_IDS, "at least one candidate"),
        ({schema.CANDIDATE_ITEM_IDS: np.arange(5)}, schema.CANDIDATE_ITEM_IDS, "5 candidates exceed max_candidates 4"),
        ({schema.CANDIDATE_ITEM_IDS: np.array([1, 100])}, schema.CANDIDATE_ITEM_IDS, "ids must lie in [0, 100), got [1, 100]"),
    ],
)
def test_each_rule_names_its_tensor(overrides, tensor: str, rule: str) -> None:
    with pytest.raises(schema.RequestError) as info:
        schema.validate(request(**overrides), LIMITS)
    assert info.value.tensor == tensor
    assert rule in str(info.value) and str(info.value).startswith(tensor)


def test_bare_network_requests_need_no_user() -> None:
    assert schema.validate(request(**{schema.USER_ID: None}), LIMITS, with_user=False).user_id == 0
    with pytest.raises(schema.RequestError, match="USER_ID: is required"):
        schema.validate(request(**{schema.USER_ID: None}), LIMITS)


def test_the_network_checks_its_own_arguments_with_the_schema_rules() -> None:
    """A direct HSTU caller breaking a request rule gets schema's error, under the argument's name."""
    model = HSTU(preset("tiny")).eval()
    cfg = model.config
    emb = model.item_emb(torch.arange(cfg.max_seq_len + 1))
    with pytest.raises(schema.RequestError, match=f"new_emb: history length {cfg.max_seq_len + 1} exceeds max_seq_len"):
        model.prefill(emb, torch.arange(cfg.max_seq_len + 1), torch.zeros(cfg.max_seq_len + 1, dtype=torch.int64))
    with pytest.raises(schema.RequestError, match=rf"ids: item ids must lie in \[0, {cfg.num_items}\)"):
        model.embed_items(torch.tensor([cfg.num_items]))


def window(**overrides: float) -> PoolStats:
    base = dict(
        window_s=0.1, requests=20, history_len_sum=1000, hot_user_requests=5, emb_lookups=400, emb_hits=300,
        kv_requests=20, kv_hits=10, kv_partial_hits=4, kv_hits_more=13, kv_hits_less=8, kv_tokens=1000, kv_hit_tokens=600,
        emb_evictions=0,
        kv_evictions=0, emb_pages=10, kv_pages=10, kv_cached_users=7, h2d_critical_bytes=0,
        h2d_background_bytes=0, alpha=0.5, target_alpha=0.5,
    )
    base.update(overrides)
    return PoolStats(**base)


def test_observation_of_a_window_follows_the_shared_definitions() -> None:
    stats = window()
    kv = KVLookback().add(stats.window_s, stats.kv_requests, stats.kv_hits, stats.kv_hits_more, stats.kv_hits_less)
    obs = observe(stats, np.full(20, 2.5), kv)  # 20 x 2.5 ms busy in 100 ms: utilisation 0.5
    assert obs.emb_hit_rate == pytest.approx(0.75) and obs.kv_hit_rate == pytest.approx(0.5)
    assert obs.hot_user_share == pytest.approx(0.25) and obs.mean_history_len == pytest.approx(50)
    assert obs.request_rate == pytest.approx(200) and obs.p99_ms == pytest.approx(2.5)
    assert obs.queue_depth == pytest.approx(0.5)  # rho^2 / (1 - rho)
    assert obs.kv_hit_rate_more == pytest.approx(0.65) and obs.kv_hit_rate_less == pytest.approx(0.4)


def test_queue_estimate_grows_with_load_and_stays_finite_at_saturation() -> None:
    depths = [observe(window(), np.full(20, ms), (0.5, 0.6, 0.4)).queue_depth for ms in (0.5, 2.5, 4.5, 50.0)]
    assert depths == sorted(depths) and np.isfinite(depths[-1])
    assert observe(replace(window(), requests=0), np.zeros(0), (0.0, 0.0, 0.0)).p99_ms == 0.0


def test_kv_hit_rates_are_counted_over_the_trailing_lookback() -> None:
    lookback = KVLookback(lookback_s=10.0)
    for _ in range(10):
        assert lookback.add(1.0, 100, 50, 60, 40) == pytest.approx((0.5, 0.6, 0.4))
    rates = lookback.add(1.0, 100, 0, 0, 0)  # the oldest of 11 windows drops out: 9 of them at 0.5
    assert rates == pytest.approx((0.45, 0.54, 0.36))
    for _ in range(9):
        lookback.add(1.0, 100, 0, 0, 0)
    assert lookback.add(0.5, 0, 0, 0, 0) == pytest.approx((0.0, 0.0, 0.0))  # no request left with a hit
    assert KVLookback().add(1.0, 0, 0, 0, 0) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="hits_less <= hits <= hits_more <= requests"):
        lookback.add(1.0, 10, 5, 4, 1)
    with pytest.raises(ValueError, match="lookback_s must be > 0"):
        KVLookback(0.0)
    with pytest.raises(ValueError, match="window_s >= 0"):
        lookback.add(-1.0, 0, 0, 0, 0)
    zero = KVLookback()
    for _ in range(5000):  # windows of no length never cover the lookback: their number is capped instead
        zero.add(0.0, 1, 1, 1, 0)
    for _ in range(999):
        rates = zero.add(0.0, 1, 0, 0, 0)
    assert rates[0] > 0.0  # one hit window is still inside the last 1000
    assert zero.add(0.0, 1, 0, 0, 0) == (0.0, 0.0, 0.0)


def test_set_parameters_changes_known_keys_and_refuses_unknown(tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text('parameters [\n  { key: "alpha" value: { string_value: "0.5" } }\n]\n')
    set_parameters(config, {"alpha": "0.25"})
    assert 'string_value: "0.25"' in config.read_text() and get_parameter(config, "alpha") == "0.25"
    with pytest.raises(KeyError, match="pool_bytes"):
        set_parameters(config, {"pool_bytes": "1"})
    with pytest.raises(KeyError, match="pool_bytes"):
        get_parameter(config, "pool_bytes")
