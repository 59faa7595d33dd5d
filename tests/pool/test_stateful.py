"""Pool invariants under random request streams and random alpha moves (hypothesis stateful).

The pool is driven directly, with a real host table and, as the K/V of a
history, a deterministic function of each token and its position (token i's
K/V depends on token i only, so any prefix of it is the K/V of the prefix,
as with HSTU). After every step: bytes in use <= pool_bytes, every page has
exactly one owner, and every row or prefix the pool holds or serves equals
what it should be, so a row or prefix evicted (and its page reused) is
never served.
"""

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from helmrec.pool.config import PoolConfig
from helmrec.pool.host_table import HostTable
from helmrec.pool.kv_cache import HistoryTokens
from helmrec.pool.pages import Side
from helmrec.pool.pool import Pool

NUM_ITEMS, D, LAYERS, W = 40, 4, 2, 4
ROW_BYTES, TOKEN_BYTES = D * 4, LAYERS * W * 4
USERS = 5
MAX_LEN = 12


def expected_kv(ids, ts, actions):
    """[L, n, W]: exact small integers in fp32, different per token, layer and column."""
    pos = torch.arange(ids.numel())
    token = (ids * 31 + ts * 7 + actions * 3 + pos) % 1009
    layer = torch.arange(LAYERS).view(LAYERS, 1, 1) * 101
    col = torch.arange(W).view(1, 1, W) * 13
    return ((token.view(1, -1, 1) + layer + col) % 2003).to(torch.float32)


class PoolMachine(RuleBasedStateMachine):
    @initialize(
        pages=st.integers(4, 14),
        rows_per_page=st.sampled_from([1, 2, 4]),
        tail=st.integers(0, 15),
        alpha=st.floats(0, 1),
        max_move=st.integers(1, 3),
    )
    def setup(self, pages, rows_per_page, tail, alpha, max_move):
        page_bytes = rows_per_page * ROW_BYTES  # 1 to 4 rows, 0.5 to 2 KV tokens per page
        if page_bytes < TOKEN_BYTES:
            page_bytes = TOKEN_BYTES
        self.config = PoolConfig(pages * page_bytes + tail, page_bytes, alpha, 1e9, max_move)
        self.table = torch.randn(NUM_ITEMS, D, generator=torch.Generator().manual_seed(pages))
        self.pool = Pool(self.config, HostTable(self.table, torch.device("cpu")), LAYERS, W, torch.float32)
        self.histories: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.clock = 1000

    # -- requests ------------------------------------------------------------------------------------
    def _new_tokens(self, data, n):
        ids = torch.tensor(data.draw(st.lists(st.integers(0, NUM_ITEMS - 1), min_size=n, max_size=n)), dtype=torch.int64)
        acts = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=torch.int64)
        ts = self.clock + torch.arange(n, dtype=torch.int64) * 10
        self.clock += 10 * n + 1
        return ids, ts, acts

    @rule(data=st.data(), user=st.integers(0, USERS - 1), mode=st.sampled_from(["same", "extend", "rewrite", "shorter", "flip"]))
    def request(self, data, user, mode):
        old = self.histories.get(user)
        if old is None or mode == "rewrite":
            ids, ts, acts = self._new_tokens(data, data.draw(st.integers(0, MAX_LEN)))
        elif mode == "same":
            ids, ts, acts = old
        elif mode == "extend":
            room = MAX_LEN - old[0].numel()
            add = self._new_tokens(data, data.draw(st.integers(0, max(room, 0))))
            ids, ts, acts = (torch.cat([a, b]) for a, b in zip(old, add))
        elif mode == "shorter":
            cut = data.draw(st.integers(0, old[0].numel()))
            ids, ts, acts = (t[:cut] for t in old)
        else:  # flip one action inside the history: the cached prefix must no longer match
            ids, ts, acts = old
            if acts.numel():
                acts = acts.clone()
                i = data.draw(st.integers(0, acts.numel() - 1))
                acts[i] = 1 - acts[i]
        cands = torch.tensor(data.draw(st.lists(st.integers(0, NUM_ITEMS - 1), min_size=1, max_size=6)), dtype=torch.int64)
        tokens = HistoryTokens(ids, ts, acts)
        cached = self.pool.kv_cache.cached_length(user)
        found = self.pool.lookup(user, tokens, ids, cands)
        n0 = found.prefix_len
        full = expected_kv(ids, ts, acts)
        # Served prefix: a true prefix of this history, byte-equal to its K/V; reused whenever valid.
        assert 0 <= n0 <= ids.numel()
        assert found.kv_hit_less <= (n0 > 0) <= found.kv_hit_more, "a neighbouring KV size disagrees with this one"
        if old is not None and cached and cached <= ids.numel() and mode in ("same", "extend"):
            assert n0 == cached, "a valid cached prefix was not reused"
        if mode == "flip" and n0:
            assert torch.equal(acts[:n0], old[2][:n0])
        if n0:
            assert torch.equal(found.prefix_kv, full[:, :n0])
        else:
            assert found.prefix_kv is None
        # Served rows: exactly the host rows of the ids asked for.
        assert torch.equal(found.suffix_emb, self.table[ids[n0:]])
        assert torch.equal(found.cand_emb, self.table[cands])
        self.pool.commit(user, tokens, found, full)
        self.histories[user] = (ids, ts, acts)

    # -- background and the controller ---------------------------------------------------------------
    @rule(alpha=st.floats(0, 1))
    def set_alpha(self, alpha):
        before = self.pool.alpha
        self.pool.set_alpha(alpha)
        assert self.pool.alpha == before, "set_alpha must not move pages itself"

    @rule()
    def step_moves(self):
        emb_before = self.pool._alloc.pages(Side.EMB)
        target = round(self.pool.target_alpha * self.pool.num_pages)
        critical_before = self.pool._stats.h2d_critical_bytes
        moved = self.pool.step_moves()
        emb_after = self.pool._alloc.pages(Side.EMB)
        assert moved == abs(emb_after - emb_before) <= self.config.max_move_pages_per_step
        assert abs(target - emb_after) == max(0, abs(target - emb_before) - moved), "move went the wrong way"
        assert moved == min(abs(target - emb_before), self.config.max_move_pages_per_step)
        assert self.pool._stats.h2d_critical_bytes == critical_before, "a move put H2D bytes on the critical path"

    @rule(rows=st.integers(0, 8))
    def background(self, rows):
        critical_before = self.pool._stats.h2d_critical_bytes
        copied = self.pool.background_step(rows * ROW_BYTES)
        assert copied <= rows * ROW_BYTES
        assert self.pool._stats.h2d_critical_bytes == critical_before

    @precondition(lambda self: hasattr(self, "pool"))
    @rule()
    def read_stats(self):
        s = self.pool.stats()
        assert s.emb_hits <= s.emb_lookups and s.kv_partial_hits <= s.kv_hits <= s.kv_requests
        assert s.kv_hits_less <= s.kv_hits <= s.kv_hits_more <= s.kv_requests  # the ghost's neighbours bracket it
        assert s.kv_hit_tokens <= s.kv_tokens and s.hot_user_requests <= s.requests
        assert s.emb_pages + s.kv_pages == self.pool.num_pages

    # -- invariants ----------------------------------------------------------------------------------
    @invariant()
    def pool_is_consistent(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        pool.check_invariants()
        assert pool.bytes_in_use() <= self.config.pool_bytes
        owners = [pool._alloc.owner(p) for p in range(pool.num_pages)]
        kv_pages = [p for u in pool.kv_cache.users() for p in pool.kv_cache._entries[u].pages]
        emb_held = pool._alloc.pages_in_use(Side.EMB).tolist()
        assert len(kv_pages) + len(emb_held) == len(set(kv_pages) | set(emb_held)), "a page serves both caches"
        assert all(owners[p] == Side.KV for p in kv_pages) and all(owners[p] == Side.EMB for p in emb_held)

    @invariant()
    def held_content_is_what_it_claims(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        items = pool.emb_cache.resident_items()
        if items.size:
            rows = pool.emb_cache.gather(pool.emb_cache.slots_of(items))
            assert torch.equal(rows, self.table[torch.from_numpy(items)]), "a resident row holds other data"
        for user in pool.kv_cache.users():
            n = pool.kv_cache.cached_length(user)
            ids, ts, acts = self.histories[user]
            assert n <= ids.numel()
            assert torch.equal(pool.kv_cache.read(user, n), expected_kv(ids, ts, acts)[:, :n])


PoolMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPoolStateful = PoolMachine.TestCase


def test_in_flight_admission_is_a_miss_not_a_wait():
    """Rows reserved for a background copy are served from the host table until published."""
    table = torch.randn(NUM_ITEMS, D)
    pool = Pool(PoolConfig(8 * 64, 64, 0.5, 1e9, 1), HostTable(table, torch.device("cpu")), LAYERS, W, torch.float32)
    ids = np.array([3, 5, 7])
    reservation, _ = pool.emb_cache.reserve(ids, max_rows=3, evict=True)
    assert reservation.size == 3
    empty = torch.empty(0, dtype=torch.int64)
    tokens = HistoryTokens(empty, empty, empty)
    found = pool.lookup(1, tokens, torch.empty(0, dtype=torch.int64), torch.from_numpy(ids))
    assert torch.equal(found.cand_emb, table[torch.from_numpy(ids)])
    assert list(found.miss_ids) == [3, 5, 7]
    pool.set_alpha(0.0)
    while pool.step_moves():  # the reserved rows' pages leave EMB before the copy lands
        pass
    assert pool.emb_cache.publish(reservation, table[torch.from_numpy(ids)]) == 0
    assert pool.emb_cache.resident_items().size == 0
    pool.check_invariants()


def test_sampled_victims_on_a_large_pool_keep_the_cache_exact(monkeypatch):
    """Past the exact-ranking size, victims are sampled; rows served must still be the right rows."""
    from helmrec.pool import emb_cache

    monkeypatch.setattr(emb_cache, "_EXACT_VICTIM_SLOTS", 0)
    table = torch.randn(NUM_ITEMS, D)
    pool = Pool(PoolConfig(6 * 64, 64, 1.0, 1e9, 1), HostTable(table, torch.device("cpu")), LAYERS, W, torch.float32)
    rng = np.random.default_rng(1)
    empty = torch.empty(0, dtype=torch.int64)
    tokens = HistoryTokens(empty, empty, empty)
    for step in range(60):
        cands = torch.from_numpy(rng.zipf(1.5, 8) % NUM_ITEMS)
        found = pool.lookup(step, tokens, empty, cands)
        assert torch.equal(found.cand_emb, table[cands])
        pool.commit(step, tokens, found, torch.empty(LAYERS, 0, W))
        pool.background_step(4 * ROW_BYTES)
        pool.check_invariants()
    stats = pool.stats()
    assert stats.emb_evictions > 0 and stats.emb_hits > 0
    items = pool.emb_cache.resident_items()
    assert torch.equal(pool.emb_cache.gather(pool.emb_cache.slots_of(items)), table[torch.from_numpy(items)])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(0, 29), st.sampled_from(["id", "ts", "action"]))
def test_a_cached_prefix_is_reused_only_when_every_token_matches(n, where, field):
    """The prefix check compares the stored (id, ts, action) bytes: the same history is a full
    hit, one more event a partial hit, and one changed field anywhere in the prefix a miss."""
    table = torch.randn(NUM_ITEMS, D)
    pool = Pool(PoolConfig(64 * 4096, 4096, 0.5, 1e9, 1), HostTable(table, torch.device("cpu")), LAYERS, W, torch.float32)
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(1, NUM_ITEMS, (n + 1,), generator=gen)
    ts, acts = 1_000 + 10 * torch.arange(n + 1), torch.randint(0, 3, (n + 1,), generator=gen)
    cand = torch.tensor([1, 2])

    def reused(i: torch.Tensor, t: torch.Tensor, a: torch.Tensor) -> int:
        tokens = HistoryTokens(i, t, a)
        found = pool.lookup(7, tokens, i, cand)
        pool.commit(7, tokens, found, torch.zeros(LAYERS, i.numel(), W))
        return found.prefix_len

    assert reused(ids[:n], ts[:n], acts[:n]) == 0
    assert reused(ids[:n], ts[:n], acts[:n]) == n
    assert reused(ids, ts, acts) == n
    changed = {"id": ids.clone(), "ts": ts.clone(), "action": acts.clone()}
    k = where % n
    # another valid value: ids stay in [1, NUM_ITEMS)
    changed[field][k] = changed[field][k] % (NUM_ITEMS - 1) + 1 if field == "id" else changed[field][k] + 1
    assert reused(changed["id"], changed["ts"], changed["action"]) == 0
    pool.check_invariants()


def test_refill_scan_skipped_only_while_no_candidate_can_have_appeared():
    """The refill scan is skipped after one that found no candidate, until a miss or an
    eviction: a new miss, and rows evicted by an alpha move, are refill candidates again."""
    table = torch.randn(NUM_ITEMS, D)
    pool = Pool(PoolConfig(8 * 64, 64, 1.0, 1e9, 8), HostTable(table, torch.device("cpu")), LAYERS, W, torch.float32)
    cache = pool.emb_cache
    cache.lookup(np.array([3, 5]))
    assert sorted(cache.refill_candidates(100).tolist()) == [3, 5]
    while pool.background_step(100 * ROW_BYTES):
        pass
    assert sorted(cache.resident_items().tolist()) == [3, 5]
    assert cache.refill_candidates(100).size == 0  # a scan that finds none: later ones wait for a change
    assert cache.refill_candidates(100).size == 0
    cache.lookup(np.array([3, 7]))  # 7 misses
    assert cache.refill_candidates(100).tolist() == [7]
    pool.background_step(100 * ROW_BYTES)
    pool.set_alpha(0.0)
    while pool.step_moves():
        pass
    pool.set_alpha(1.0)
    while pool.step_moves():
        pass
    assert sorted(cache.refill_candidates(100).tolist()) == [3, 5, 7]  # evicted by the move
    pool.check_invariants()
