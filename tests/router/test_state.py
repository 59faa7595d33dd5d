"""The router's estimates of a backend's caches: the KV placement record follows
the backend's LRU and its reports, the EMB sketch remembers hot items in bounded
memory and forgets cold ones, and a backend's metrics text is read correctly."""

from __future__ import annotations

import numpy as np
import pytest

from helmrec.router.backend_metrics import parse_report
from helmrec.router.emb_locality import MAX_SAMPLED_ITEMS, HotItemSketch, item_slots, sample
from helmrec.router.kv_residency import KVResidency
from helmrec.router.state import BackendState, RouteRequest


def test_record_holds_the_latest_history_length_and_rejects_longer_ones() -> None:
    kv = KVResidency()
    kv.record(5, 10)
    assert kv.cached_len(5, 12) == 10 and kv.fraction(5, 20) == 0.5
    assert kv.cached_len(5, 9) == 0  # a 10-token cache cannot be a prefix of 9 tokens
    assert kv.cached_len(6, 12) == 0


def test_record_is_lru_bounded_by_capacity() -> None:
    kv = KVResidency(capacity=3)
    for user in (1, 2, 3):
        kv.record(user, 4)
    kv.record(1, 6)  # 1 becomes the most recent
    kv.record(4, 4)  # evicts 2, the least recent
    assert 2 not in kv and all(u in kv for u in (1, 3, 4))


def test_backend_report_trims_record_and_learns_capacity_from_evictions() -> None:
    kv = KVResidency()
    for user in range(10):
        kv.record(user, 8)
    kv.observe_backend(cached_users=10, kv_evictions_total=0)
    assert len(kv) == 10 and kv.capacity > 10  # no evictions yet: capacity unknown
    kv.observe_backend(cached_users=6, kv_evictions_total=4)
    assert len(kv) == 6 and kv.capacity == 6 and 0 not in kv and 9 in kv
    kv.observe_backend(cached_users=None, kv_evictions_total=6)  # gauge missing: counter alone
    assert len(kv) == 4 and 5 not in kv
    kv.observe_backend(cached_users=None, kv_evictions_total=1)  # counter went back: a restart
    assert len(kv) == 0


def test_bad_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="KVResidency.capacity must be >= 1"):
        KVResidency(capacity=0)
    with pytest.raises(ValueError, match="HotItemSketch.decay_every"):
        HotItemSketch(decay_every=0)


def test_sketch_knows_seen_items_and_forgets_items_seen_once() -> None:
    sketch = HotItemSketch(decay_every=1 << 29)
    hot = item_slots(np.arange(10, 74, dtype=np.int64))
    sketch.observe(hot)
    assert sketch.hot_share(hot) == 1.0
    unseen = item_slots(np.arange(100_000, 100_064, dtype=np.int64))
    assert sketch.hot_share(unseen) <= 0.05  # only hash collisions (64 of 65536 slots used)
    assert sketch.hot_share(item_slots(np.zeros(0, np.int64))) == 0.0
    decaying = HotItemSketch(decay_every=64)
    decaying.observe(hot)  # 64 observations: one halving, counts 1 -> 0
    assert decaying.hot_share(hot) == 0.0
    twice = HotItemSketch(decay_every=128)
    twice.observe(hot[:32])
    twice.observe(hot[:32])
    twice.observe(hot[32:])
    twice.observe(hot[32:])  # 128 observations, then halving: counts 2 -> 1 survive
    assert twice.hot_share(hot) == 1.0


def test_sketch_samples_at_most_a_fixed_number_of_candidates() -> None:
    ids = np.arange(2048, dtype=np.int64)
    picked = sample(ids)
    assert len(picked) == MAX_SAMPLED_ITEMS and picked[0] == 0 and picked[-1] > 1900


def test_backend_state_counts_in_flight_and_records_placements() -> None:
    b = BackendState(name="b0", max_in_flight=1)
    request = RouteRequest(user_id=3, history_len=7, candidates=np.array([1, 2, 3], np.int64))
    b.admit(request)
    assert not b.has_room and b.kv.cached_len(3, 7) == 7 and b.emb.hot_share(request.item_slots) == 1.0
    b.release()
    with pytest.raises(RuntimeError, match="release\\(\\) without a matching admit"):
        b.release()
    b.mark_down()
    assert not b.has_room and len(b.kv) == 0 and b.emb.hot_share(request.item_slots) == 0.0
    with pytest.raises(ValueError, match="RouteRequest.history_len must be >= 0"):
        RouteRequest(user_id=1, history_len=-1)


METRICS_TEXT = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="hstu_ensemble",version="1"} 2
nv_inference_pending_request_count{model="hstu_pool",version="1"} 1
# HELP helmrec_pool_alpha share of pages given to EMB
# TYPE helmrec_pool_alpha gauge
helmrec_pool_alpha{model="hstu_pool",version="1"} 0.25
# TYPE helmrec_kv_requests_total counter
helmrec_kv_requests_total{model="hstu_pool",version="1"} 40
# TYPE helmrec_kv_hits_total counter
helmrec_kv_hits_total{model="hstu_pool",version="1"} 30
# TYPE helmrec_kv_cached_users gauge
helmrec_kv_cached_users{model="hstu_pool",version="1"} 12
# TYPE helmrec_evictions_total counter
helmrec_evictions_total{model="hstu_pool",side="kv",version="1"} 3
helmrec_evictions_total{model="hstu_pool",side="emb",version="1"} 5
"""


def test_backend_metrics_text_becomes_a_report() -> None:
    report = parse_report(METRICS_TEXT)
    assert report.alpha == 0.25 and report.pending_requests == 3
    assert report.kv_requests_total == 40 and report.kv_hits_total == 30 and report.kv_cached_users == 12
    assert report.kv_evictions_total == 3 and report.emb_evictions_total == 5
    assert report.emb_lookups_total is None  # not exported: None, never a made-up 0
    with pytest.raises(ValueError):
        parse_report("this is { not prometheus")
