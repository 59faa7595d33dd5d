"""The load generator's pure parts: trace replay, request arrays, latency figures, cache totals.

- A returning user's request extends the history of their previous one (KV reuse is possible).
- Every request fits the served network's limits.
- The replay keeps the trace's schedule when the servers fall behind.
- P50/P99/SLO/throughput are computed from exact timings; hit rates from counter deltas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helmrec.load.bench.latency import Latencies, LatencyLog, log_files, part_path, read_latencies, summarize, timeline
from helmrec.load.bench.metrics import MetricsSample, cache_totals
from helmrec.load.bench.workload import Partition, TraceFeed, WorkloadConfig, make_feed, request_arrays
from helmrec.router.backend_metrics import BackendReport

LIMITS = dict(num_items=300, max_history_len=64, max_candidates=64)


@pytest.fixture(scope="module")
def feed() -> TraceFeed:
    return make_feed(WorkloadConfig(regime="burst", duration_s=20.0, base_rate=40.0), **LIMITS)


def test_requests_fit_the_model_and_returning_users_extend_their_prefix(feed: TraceFeed) -> None:
    trace = feed.trace
    last: dict[int, dict[str, np.ndarray]] = {}
    extended = 0
    for row in range(len(trace)):
        arrays = request_arrays(trace, row)
        hist, ts, cands = arrays["HISTORY_ITEM_IDS"], arrays["HISTORY_TIMESTAMPS"], arrays["CANDIDATE_ITEM_IDS"]
        assert all(a.dtype == np.int64 for a in arrays.values())
        assert 1 <= hist.size <= LIMITS["max_history_len"] and ts.size == hist.size
        assert hist.min() >= 1 and hist.max() < LIMITS["num_items"] and cands.max() < LIMITS["num_items"]
        assert cands.size == WorkloadConfig().candidates and np.all(np.diff(ts) >= 0)
        user = int(arrays["USER_ID"][0])
        if user in last:
            prev = last[user]["HISTORY_ITEM_IDS"]
            assert hist.size >= prev.size
            np.testing.assert_array_equal(hist[: prev.size], prev)  # the previous history is a prefix
            np.testing.assert_array_equal(ts[: prev.size], last[user]["HISTORY_TIMESTAMPS"])
            extended += hist.size > prev.size
        last[user] = arrays
    assert extended > 0, "some returning users must bring new items (incremental prefill)"
    assert len(last) < len(trace), "some users must return (KV reuse)"


def test_same_seed_same_requests() -> None:
    a = make_feed(WorkloadConfig(seed=3, duration_s=5.0), **LIMITS).trace
    b = make_feed(WorkloadConfig(seed=3, duration_s=5.0), **LIMITS).trace
    c = make_feed(WorkloadConfig(seed=4, duration_s=5.0), **LIMITS).trace
    np.testing.assert_array_equal(a.user_id, b.user_id)
    np.testing.assert_array_equal(a.candidate_ids(7), b.candidate_ids(7))
    assert not np.array_equal(a.user_id[:50], c.user_id[:50])


def test_feed_hands_rows_in_order_waits_for_future_rows_and_skips_stale_ones() -> None:
    trace = make_feed(WorkloadConfig(duration_s=10.0, base_rate=40.0), **LIMITS).trace
    feed = TraceFeed(trace, max_lag_s=0.5)
    row, wait = feed.take(0.0)
    assert row == 0 and wait == pytest.approx(trace.t_s[0])
    row, wait = feed.take(trace.t_s[1] + 0.1)  # a little behind: sent now, not skipped
    assert row == 1 and wait == 0.0 and feed.skipped == 0
    row, _ = feed.take(5.0)  # far behind: everything older than 4.5 s is skipped
    assert trace.t_s[row] >= 4.5 and trace.t_s[row - 1] < 4.5
    assert feed.skipped == row - 2
    end = float(trace.t_s[-1]) + 0.1
    fresh = int(np.count_nonzero(trace.t_s >= end - 0.5))
    taken = [feed.take(end) for _ in range(fresh)]
    assert [r for r, _ in taken] == list(range(len(trace) - fresh, len(trace)))  # the fresh tail, in order
    assert feed.take(end) is None  # then the trace is used up


def test_partitions_send_every_row_once_and_keep_each_user_in_one_share() -> None:
    trace = make_feed(WorkloadConfig(duration_s=10.0, base_rate=40.0), **LIMITS).trace
    shares = [TraceFeed(trace, max_lag_s=1e9, partition=Partition(k, 3)) for k in range(3)]
    rows = [[taken[0] for taken in iter(lambda f=feed: f.take(0.0), None)] for feed in shares]
    assert sorted(r for share in rows for r in share) == list(range(len(trace)))
    for k, share in enumerate(rows):
        assert share == sorted(share) and set(trace.user_id[share] % 3) == {k}
    # A share keeps the trace's own timing: its first row waits for that row's arrival time.
    first = shares[1].trace.t_s[rows[1][0]]
    assert TraceFeed(trace, partition=Partition(1, 3)).take(0.0) == (rows[1][0], pytest.approx(first))
    with pytest.raises(ValueError, match=r"index must be in \[0, count\)"):
        Partition(3, 3)


def test_the_parts_of_a_log_are_read_back_as_one(tmp_path: Path) -> None:
    target = tmp_path / "latency.csv"
    for index, start in ((0, 2.0), (1, 1.0)):
        log = LatencyLog()
        log.record(start, 3.0, index, 5, True)
        log.write_csv(part_path(target, index))
    files = log_files(target)
    assert [f.name for f in files] == ["latency.part0.csv", "latency.part1.csv"]
    merged = read_latencies(*files)
    assert merged.user_id.tolist() == [1, 0]  # sorted by start time across the parts


def test_candidates_beyond_the_model_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"candidates \(80\) exceeds the served model's max_candidates \(64\)"):
        WorkloadConfig(candidates=80).trace_config(**LIMITS)


def test_latency_figures_from_exact_timings(tmp_path: Path) -> None:
    log = LatencyLog()
    # 100 requests over ~10 s: latencies 0.5, 1.5, ..., 99.5 ms (sub-ms precision kept); two failures.
    for i in range(100):
        log.record(1_000.0 + i * 0.1, i + 0.5, user_id=i % 7, history_len=3, ok=i not in (10, 20))
    path = tmp_path / "lat.csv"
    log.write_csv(path)
    lat = read_latencies(path)
    assert len(lat) == 100 and lat.latency_ms[0] == 0.5
    s = summarize(lat, slo_ms=50.0)
    good = np.array([i + 0.5 for i in range(100) if i not in (10, 20)])
    assert s.requests == 100 and s.failures == 2
    assert s.p50_ms == pytest.approx(np.percentile(good, 50)) and s.p99_ms == pytest.approx(np.percentile(good, 99))
    assert s.slo_satisfaction == pytest.approx((50 - 2) / 100)  # failures count against the SLO
    assert s.throughput_rps == pytest.approx(100 / (9.9 + 0.0995))
    tl = timeline(lat, bin_s=1.0)
    assert tl.t_s.tolist() == list(range(10)) and np.all(tl.rps == 10.0)
    assert tl.p99_ms[0] == pytest.approx(np.percentile(np.arange(10) + 0.5, 99))
    with pytest.raises(ValueError, match="slo_ms must be > 0"):
        summarize(lat, slo_ms=0.0)


def test_a_foreign_csv_is_refused_by_header(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header must be start_unix_s,latency_ms"):
        read_latencies(path)


def test_cache_totals_are_counter_deltas_summed_over_nodes() -> None:
    def report(alpha: float, emb: tuple[int, int], kv: tuple[int, int]) -> BackendReport:
        return BackendReport(alpha=alpha, emb_lookups_total=emb[0], emb_hits_total=emb[1],
                             kv_requests_total=kv[0], kv_hits_total=kv[1])  # fmt: skip

    samples = [
        MetricsSample(0.0, 0, report(0.5, (100, 50), (10, 1))),  # warm-up before the run
        MetricsSample(0.0, 1, report(0.5, (0, 0), (0, 0))),
        MetricsSample(1.0, 0, report(0.3, (300, 200), (30, 11))),
        MetricsSample(1.0, 1, report(0.7, (100, 20), (20, 4))),
    ]
    totals = cache_totals(samples)
    assert totals.emb_hit_rate == pytest.approx((150 + 20) / (200 + 100))
    assert totals.kv_hit_rate == pytest.approx((10 + 4) / (20 + 20))
    assert totals.mean_alpha == pytest.approx(0.5)
    assert np.isnan(cache_totals([MetricsSample(0.0, 0, BackendReport())]).kv_hit_rate)
    # A node scraped before it first published its counters: they start from zero.
    late = [MetricsSample(0.0, 0, BackendReport()), MetricsSample(1.0, 0, report(0.5, (10, 5), (4, 1)))]
    assert cache_totals(late).kv_hit_rate == pytest.approx(0.25)
    # After a warm-up: from each node's last scrape at or before the cut, alpha averaged after it.
    later = [*samples, MetricsSample(2.0, 0, report(0.1, (400, 290), (40, 20))),
             MetricsSample(2.0, 1, report(0.9, (200, 70), (30, 9)))]  # fmt: skip
    warm = cache_totals(later, since_unix_s=1.5)
    assert warm.emb_hit_rate == pytest.approx((90 + 50) / (100 + 100))
    assert warm.kv_hit_rate == pytest.approx((9 + 5) / (10 + 10))
    assert warm.mean_alpha == pytest.approx(0.5)


def test_a_warm_up_leaves_the_first_seconds_out_of_the_figures() -> None:
    n = 10
    lat = Latencies(100.0 + np.arange(n), np.arange(n, dtype=float) + 1, np.arange(n), np.ones(n, int), np.ones(n, bool))
    kept = lat.since(4.0)
    assert kept.latency_ms.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0] and kept.t_s[0] == 0.0
    assert summarize(kept, 25.0).requests == 6


def test_the_grounded_workload_keeps_its_laws_and_takes_the_runs_sizes_and_timing() -> None:
    """`--workload production`: sessions and the MovieLens-fitted spread come from the grounded workload;
    users, items, history cap, candidates, rate and burst timing from the run (bursts inside a 20 s run)."""
    from helmrec.workload.traces import PRODUCTION

    run = WorkloadConfig(regime="burst", workload="production", duration_s=20.0, base_rate=40.0)
    config = run.trace_config(**LIMITS)
    assert config.session_return_share == PRODUCTION.session_return_share > 0
    assert config.compact and config.history_law == "lognormal"
    assert (config.num_users, config.num_items, config.max_history_len, config.candidates) == (
        run.num_users, LIMITS["num_items"], LIMITS["max_history_len"], run.candidates)  # fmt: skip
    assert config.burst_start_s is None and config.burst_every_s == 10.0  # first burst at 5 s, not 60 s
    trace = make_feed(run, **LIMITS).trace
    assert trace.user_id.max() < run.num_users and trace.t_s.max() < 20.0
    assert run.rate_at(6.0) == pytest.approx(2 * run.rate_at(1.0))  # in the burst: twice the base rate
    with pytest.raises(ValueError, match="WorkloadConfig.workload must be one of"):
        WorkloadConfig(workload="other")
