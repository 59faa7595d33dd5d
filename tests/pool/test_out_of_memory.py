"""A group that runs out of device memory fails alone and leaves the pool consistent.

With `device_memory_bytes` set, an allocation past the cap raises `torch.cuda.OutOfMemoryError`
on the request path and hstu_pool serves on; so the pool must not keep what the failed group
half did. Simulated on the CPU by failing the two allocations that follow pool bookkeeping:
the miss rows' copy after an in-place lookup pinned its users, and the K/V scatter after a
commit's entries already claimed their tokens.
"""

import dataclasses

import pytest
import torch

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.pool.config import PoolConfig
from helmrec.pool.ranker import PooledRanker, RankRequest

torch.set_num_threads(1)
TINY = dataclasses.replace(preset("tiny"), variant="production")


def _model() -> HSTU:
    torch.manual_seed(0)
    return HSTU(TINY).eval()


def _requests(seed: int, users: int = 3, n: int = 6) -> list[RankRequest]:
    gen = torch.Generator().manual_seed(seed)
    reqs = []
    for user in range(users):
        ids = torch.randint(0, TINY.num_items, (n,), generator=gen)
        ts = 1_000_000 + torch.cumsum(torch.randint(1, 5000, (n,), generator=gen), 0)
        acts = torch.randint(0, TINY.num_actions, (n,), generator=gen)
        reqs.append(RankRequest(user, ids, ts, acts, torch.randint(0, TINY.num_items, (4,), generator=gen), int(ts[-1]) + 60))
    return reqs


def _reference(model: HSTU, req: RankRequest) -> torch.Tensor:
    with torch.inference_mode():
        return model.score(req.hist_ids, req.hist_ts, req.hist_actions, req.cand_ids, req.query_ts)


def _out_of_memory(*_args: object, **_kwargs: object) -> None:
    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")


def test_a_failed_miss_copy_leaves_no_user_pinned() -> None:
    """An in-place lookup pins the users whose prefix it reuses before it copies the missed rows;
    if that copy fails the pins must go, or those users' pages could never be evicted again."""
    model = _model()
    with PooledRanker(model, PoolConfig(64 * 1024, 1024, 0.3, 1e6, 2), background_interval_s=None, in_place=True) as ranker:
        reqs = _requests(seed=1)
        ranker.rank_many(reqs)  # caches every user's KV
        table = ranker.pool.host_table
        fetch = table.fetch_critical
        table.fetch_critical = _out_of_memory  # the EMB cache is empty (no background rounds): every row misses
        with pytest.raises(torch.cuda.OutOfMemoryError):
            ranker.rank_many(reqs)
        assert ranker.pool.kv_cache.pinned_users == 0
        table.fetch_critical = fetch
        for req, scores in zip(reqs, ranker.rank_many(reqs)):
            torch.testing.assert_close(scores, _reference(model, req), atol=1e-5, rtol=0)
        ranker.pool.check_invariants()


@pytest.mark.parametrize("in_place", [False, True])
def test_a_failed_kv_write_caches_nothing_it_did_not_write(in_place: bool) -> None:
    """A commit books the entries, then scatters their K/V into the pages. If the scatter fails,
    entries claiming unwritten tokens would be reused later and rank from stale pages: they are
    dropped, so the next request of those users is a miss that ranks right."""
    model = _model()
    with PooledRanker(model, PoolConfig(64 * 1024, 1024, 0.3, 1e6, 2), background_interval_s=None, in_place=in_place) as ranker:
        kv = ranker.pool.kv_cache
        reqs = _requests(seed=2)
        kv._write = _out_of_memory
        with pytest.raises(torch.cuda.OutOfMemoryError):
            ranker.rank_many(reqs)
        assert kv.cached_users == 0 and kv.pinned_users == 0
        del kv._write
        for req, scores in zip(reqs, ranker.rank_many(reqs)):
            torch.testing.assert_close(scores, _reference(model, req), atol=1e-5, rtol=0)
        assert ranker.stats().kv_hits == 0  # the failed group left nothing to reuse
        ranker.pool.check_invariants()


def test_a_background_round_out_of_memory_copies_nothing_and_the_next_one_refills() -> None:
    """The background thread's refill copy runs into the same cap: that round is skipped, not
    raised (a raised error stops the thread, and hstu_pool then fails every request)."""
    model = _model()
    with PooledRanker(model, PoolConfig(64 * 1024, 1024, 0.5, 1e6, 2), background_interval_s=None) as ranker:
        ranker.rank_many(_requests(seed=3))  # queues its missed rows for admission
        table = ranker.pool.host_table
        fetch = table.fetch_background
        table.fetch_background = _out_of_memory
        ranker.step_background(0.01)
        ranker.pool.check_invariants()
        assert ranker.stats().h2d_background_bytes == 0
        table.fetch_background = fetch
        ranker.step_background(0.01)
        assert ranker.stats().h2d_background_bytes > 0
        ranker.pool.check_invariants()
