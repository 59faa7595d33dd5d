"""KVGhost: one running LRU cache says what caches `delta_pages` larger and smaller would have hit.

The reference is real: the same request stream replayed through caches that
really are that much larger and smaller.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helmrec.load.sim.node import NodePool
from helmrec.pool.kv_cache import HistoryTokens, KVCache
from helmrec.pool.kv_ghost import KVGhost
from helmrec.pool.pages import PageAllocator
from helmrec.workload.zipf import TableZipf, zipf_cdf
from tests.load.sim.test_node import small_config

TOKENS_PER_PAGE = 4


def kv_cache(pages: int, ghost_pages: int) -> KVCache:
    alloc = PageAllocator(pages, 0)  # every page on the KV side
    return KVCache(alloc, torch.zeros(pages, 1, TOKENS_PER_PAGE, 2), ghost_pages=ghost_pages)


def history(user: int, length: int, version: int = 0) -> HistoryTokens:
    ids = torch.arange(length, dtype=torch.int64) + 1000 * user
    return HistoryTokens(ids, torch.full((length,), version, dtype=torch.int64), torch.zeros(length, dtype=torch.int64))


def serve(cache: KVCache, user: int, tokens: HistoryTokens) -> tuple[bool, bool, bool]:
    """(hit, would hit with more, would hit with less) of one request, which is then stored."""
    found = cache.match(user, tokens)
    cache.store(user, torch.ones(1, tokens.length, 2), found.length, tokens)
    return found.length > 0, found.hit_more, found.hit_less


@pytest.mark.parametrize("length", [8, None], ids=["uniform", "growing"])
def test_counterfactual_hits_match_caches_that_really_are_larger_and_smaller(length: int | None) -> None:
    rng = np.random.default_rng(3)
    small, middle, large = kv_cache(40, 10), kv_cache(50, 10), kv_cache(60, 10)
    lengths: dict[int, int] = {}
    counts = np.zeros((3, 2), dtype=np.int64)  # rows: less / hit / more; cols: measured, real
    users = rng.zipf(1.3, 4000) % 60
    for user in users.tolist():
        n = length or min(lengths.get(user, int(rng.integers(4, 30))) + int(rng.integers(0, 3)), 40)
        lengths[user] = n
        tokens = history(user, n)
        hit, more, less = serve(middle, user, tokens)
        counts[:, 0] += (less, hit, more)
        counts[:, 1] += (serve(small, user, tokens)[0], hit, serve(large, user, tokens)[0])
    assert counts[0, 1] < counts[1, 1] < counts[2, 1]  # the stream does tell the three sizes apart
    if length:  # equal sizes: LRU's stack property makes the ghost exact
        np.testing.assert_array_equal(counts[:, 0], counts[:, 1])
    else:  # sizes change as histories grow: the page stack is an approximation, a close one
        np.testing.assert_allclose(counts[:, 0], counts[:, 1], rtol=0.01)


def test_a_changed_history_is_no_counterfactual_hit_either() -> None:
    cache = kv_cache(8, 4)
    serve(cache, 1, history(1, 8))
    assert cache.match(1, history(1, 8, version=1)) == (0, False, False)
    serve(cache, 1, history(1, 8, version=1))  # rewritten entry
    for user in (2, 3, 4, 5):
        serve(cache, user, history(user, 8))  # evict user 1 into the ghost
    assert cache.cached_length(1) == 0
    assert cache.match(1, history(1, 12, version=1)) == (0, True, False)  # its prefix would still be reusable
    assert cache.match(1, history(1, 12, version=0)) == (0, False, False)  # not the stored prefix


def test_ghost_keeps_only_the_last_delta_pages_of_evictions() -> None:
    ghost: KVGhost[str] = KVGhost(delta_pages=4)
    for user in range(4):
        ghost.touched(user, 2)

    def bottom(free: int) -> list[bool]:
        return [ghost.in_bottom(u, free) for u in range(4)]

    assert bottom(0) == [True, True, False, False]  # full: the LRU-most 4 pages
    assert bottom(1) == [True, True, False, False]  # 3 pages lost: user 1 straddles, cannot stay whole
    assert bottom(2) == [True, False, False, False]
    assert bottom(4) == [False] * 4  # 4 pages free: 4 fewer would lose nothing
    ghost.evicted(0, 2, "a")
    assert ghost.in_bottom(2, 0) and not ghost.in_bottom(3, 0)
    ghost.evicted(1, 2, "b")
    ghost.evicted(2, 2, "c")  # 6 ghost pages > 4: the oldest eviction goes
    assert (ghost.ghost(0), ghost.ghost(1), ghost.ghost(2)) == (None, "b", "c")
    ghost.touched(1, 2)  # back in the cache: no longer a ghost, now the most recent
    ghost.touched(4, 2)  # residents, LRU first: 3, 1, 4
    assert ghost.ghost(1) is None and ghost.in_bottom(3, 0) and ghost.in_bottom(1, 0)
    assert not ghost.in_bottom(4, 0)
    ghost.forgotten(3)
    assert ghost.in_bottom(4, 0)
    with pytest.raises(ValueError, match="delta_pages must be >= 1"):
        KVGhost(0)


def test_simulated_node_measures_the_same_counterfactual() -> None:
    """The cluster simulator's node replays the same rule (10-page users, 100-page pool, delta 10)."""
    pools = {a: NodePool(small_config(), TableZipf(zipf_cdf(1000, 0.7), np.arange(1, 1001)), alpha=a) for a in (0.4, 0.5, 0.6)}
    rng = np.random.default_rng(0)
    measured = np.zeros(3, dtype=np.int64)
    real = np.zeros(3, dtype=np.int64)
    for user in (rng.zipf(1.3, 3000) % 40).tolist():
        reused, more, less = pools[0.5].kv_serve(user, 40)
        measured += (less, reused > 0, more)
        real += (pools[0.6].kv_serve(user, 40)[0] > 0, reused > 0, pools[0.4].kv_serve(user, 40)[0] > 0)
    assert real[0] < real[1] < real[2]
    np.testing.assert_array_equal(measured, real)
