"""A simulated node keeps the real pool's rules: one page budget, KV LRU over users, EMB top rows, FIFO service."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helmrec.allocator.node_model import NodeConfig
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.node import NodePool, SimNode
from helmrec.workload.zipf import TableZipf, zipf_cdf

PAGE = 16384  # 4 KV tokens or 32 EMB rows per page with the CostModel sizes


def items(n: int) -> TableZipf:
    """The paper workload's item law over n ids (Zipf 0.7, ids in rank order)."""
    return TableZipf(zipf_cdf(n, 0.7), np.arange(1, n + 1))


def small_config(pages: int = 100, **kw: object) -> SimConfig:
    return SimConfig(nodes=1, node=NodeConfig(pool_bytes=pages * PAGE), page_bytes=PAGE, **kw)


def test_returning_user_reuses_its_prefix_and_extends_it_in_place() -> None:
    pool = NodePool(small_config(), items(1000), alpha=0.5)  # 50 KV pages = 200 tokens
    assert pool.kv_serve(7, 40)[0] == 0
    assert pool.kv_pages_used == 10
    assert pool.kv_serve(7, 43)[0] == 40  # prefix reused, one page added for the 3 new tokens
    assert pool.kv_pages_used == 11
    assert pool.kv_serve(7, 43)[0] == 43


def test_lru_user_is_evicted_first_and_pages_never_exceed_the_kv_side() -> None:
    pool = NodePool(small_config(), items(1000), alpha=0.5)
    for user in range(5):  # 5 x 40 tokens = 50 pages: exactly full
        pool.kv_serve(user, 40)
    pool.kv_serve(0, 40)  # user 0 becomes most recent
    pool.kv_serve(99, 40)  # needs 10 pages: evicts user 1, the least recently used
    assert pool.kv_serve(1, 40)[0] == 0
    assert pool.kv_serve(0, 40)[0] == 40
    assert pool.kv_pages_used <= pool.kv_pages
    rng = np.random.default_rng(0)
    for user, length in zip(rng.integers(0, 30, 500), rng.integers(1, 120, 500)):
        pool.kv_serve(int(user), int(length))
        assert pool.kv_pages_used <= pool.kv_pages
        assert pool.kv_pages_used == sum(pages for _, pages in pool._entries.values())


def test_history_larger_than_the_kv_side_is_not_cached() -> None:
    pool = NodePool(small_config(), items(1000), alpha=0.5)
    pool.kv_serve(1, 40)
    assert pool.kv_serve(2, 4 * 51)[0] == 0
    assert pool.cached_users == 0  # user 1 was evicted trying to make room; 2 never fit
    assert pool.kv_serve(2, 4 * 51)[0] == 0


def test_shrinking_kv_evicts_lru_users_and_growing_emb_fills_at_the_refill_rate() -> None:
    cdf = zipf_cdf(100_000, 0.7)
    rows_per_s = 32 * 10  # ten pages of rows per second
    cfg = small_config(refill_bytes_per_s=rows_per_s * 512.0)
    pool = NodePool(cfg, TableZipf(cdf, np.arange(1, cdf.size + 1)), alpha=0.2)
    for user in range(8):
        pool.kv_serve(user, 40)  # 80 pages over 8 users
    pool.set_alpha(0.5, now=0.0)  # KV side 50 pages: the 3 oldest users go
    assert pool.kv_pages_used <= pool.kv_pages == 50
    assert pool.kv_serve(0, 40)[0] == 0 and pool.kv_serve(7, 40)[0] == 40
    assert pool.emb_hit_prob_at(0.0) == 0.0  # nothing refilled yet
    assert pool.emb_hit_prob_at(1.0) == pytest.approx(cdf[rows_per_s - 1])
    assert pool.emb_hit_prob_at(100.0) == pytest.approx(cdf[50 * 32 - 1])  # capped by the EMB side
    pool.set_alpha(0.1, now=100.0)
    assert pool.emb_rows == 10 * 32 and pool.emb_evictions_total == 40 * 32
    with pytest.raises(ValueError, match="alpha must be in"):
        pool.set_alpha(1.5, now=0.0)


def test_fifo_queue_and_window_observation_follow_the_contract() -> None:
    cfg = small_config(pages=4000)
    node = SimNode(cfg, items(10_000), candidates=512, alpha=0.5)
    d1, hit1, lookups1, _ = node.serve(0.0, user=1, history_len=100)
    d2, hit2, lookups2, _ = node.serve(0.0, user=2, history_len=100)
    d3, hit3, lookups3, _ = node.serve(0.0, user=1, history_len=104)
    assert 0 < d1 < d2 < d3  # one server, first come first served
    assert (hit1, hit2, hit3) == (False, False, True)
    assert (lookups1, lookups3) == (612, 516)  # a KV hit looks up only the new suffix's rows
    assert d3 - d2 < d2 - d1  # the reused prefix is not prefilled again
    assert node.waiting(0.0) == 2 and node.waiting(d2) == 0
    obs = node.observation(now=0.5, interval_s=1.0)
    assert obs.kv_hit_rate == pytest.approx(1 / 3)
    assert obs.hot_user_share == pytest.approx(1 / 3)  # user 1 came back within the window
    assert obs.mean_history_len == pytest.approx(304 / 3)
    assert obs.request_rate == 3.0 and obs.alpha == 0.5
    assert obs.p99_ms == pytest.approx(np.percentile([(d - 0.0) * 1e3 for d in (d1, d2, d3)], 99))
    assert node.observation(now=1.0, interval_s=1.0).request_rate == 0.0  # read and reset


def test_config_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match="SimConfig.nodes"):
        SimConfig(nodes=0)
    with pytest.raises(ValueError, match="warmup_s < duration_s"):
        SimConfig(duration_s=10.0, warmup_s=10.0)
    with pytest.raises(ValueError, match="page_bytes"):
        dataclasses.replace(SimConfig(), page_bytes=256)
