"""PooledRanker.rank_many: a group ranks exactly like its requests one at a time.

Groups mix KV hits, returning users (grown histories), rewritten histories, new users,
repeated users inside one group and requests the pool refuses; each is checked against
the uncached network and against a second ranker fed the same requests one by one, and
the pool's invariants hold after every grouped commit.
"""

import dataclasses

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.pool.config import PoolConfig
from helmrec.pool.ranker import PooledRanker, RankRequest

torch.set_num_threads(1)
TINY = preset("tiny")
ATOL = 1e-5


def _model(variant: str) -> HSTU:
    torch.manual_seed(0)
    return HSTU(dataclasses.replace(TINY, variant=variant)).eval()


MODELS = {variant: _model(variant) for variant in ("research", "production")}
# How the grouped ranker reads histories: copied out of the pool, or in place from its pages
# (what the GPU runs; on the CPU through FusedHSTU's reference gather). The single ranker copies.
MODES = [("research", False), ("production", False), ("production", True)]


def _reference(model: HSTU, req: RankRequest) -> torch.Tensor:
    with torch.inference_mode():
        return model.score(req.hist_ids, req.hist_ts, req.hist_actions, req.cand_ids, req.query_ts)


def _events(gen: torch.Generator, n: int, start_ts: int) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, TINY.num_items, (n,), generator=gen)
    ts = start_ts + torch.cumsum(torch.randint(1, 5000, (n,), generator=gen), 0)
    acts = torch.randint(0, TINY.num_actions, (n,), generator=gen)
    return ids, ts, acts


# One request of a group: (user, kind) with kind "grow" (returning user, 1-6 new events),
# "hit" (the same history again), "rewrite" (a different history), "bad" (a candidate id
# outside the item table: the pool refuses it, alone).
REQUEST = st.tuples(st.integers(0, 5), st.sampled_from(["grow", "grow", "hit", "rewrite", "bad"]))


class GroupMachine(RuleBasedStateMachine):
    @initialize(mode=st.sampled_from(MODES), pages=st.integers(6, 48), alpha=st.floats(0.1, 0.9), seed=st.integers(0, 99))
    def setup(self, mode, pages, alpha, seed):
        variant, in_place = mode
        self.model = MODELS[variant]
        config = PoolConfig(pages * 1024, 1024, alpha, 1e6, 2)  # tiny: one KV token is 512 B, one row 128 B
        self.grouped = PooledRanker(self.model, config, background_interval_s=None, in_place=in_place)
        self.single = PooledRanker(self.model, config, background_interval_s=None, in_place=False)
        self.gen = torch.Generator().manual_seed(seed)
        self.histories: dict[int, tuple[torch.Tensor, ...]] = {}

    def teardown(self):
        for name in ("grouped", "single"):
            if hasattr(self, name):
                getattr(self, name).close()

    def _request(self, user: int, kind: str) -> RankRequest:
        old = self.histories.get(user)
        if old is None or kind == "rewrite":
            hist = _events(self.gen, int(torch.randint(1, 24, (1,), generator=self.gen)), 1_000_000)
        elif kind == "grow" and old[0].numel() < TINY.max_seq_len:
            n_new = min(int(torch.randint(1, 7, (1,), generator=self.gen)), TINY.max_seq_len - old[0].numel())
            add = _events(self.gen, n_new, int(old[1][-1]))
            hist = tuple(torch.cat([a, b]) for a, b in zip(old, add))
        else:
            hist = old
        cands = torch.randint(0, TINY.num_items, (int(torch.randint(1, 10, (1,), generator=self.gen)),), generator=self.gen)
        if kind == "bad":
            cands[-1] = TINY.num_items
        else:
            self.histories[user] = hist
        ids, ts, acts = hist
        return RankRequest(user, ids, ts, acts, cands, int(ts[-1]) + 60)

    @rule(group=st.lists(REQUEST, min_size=1, max_size=8))
    def rank_group(self, group):
        reqs = [self._request(user, kind) for user, kind in group]
        got = self.grouped.rank_many(reqs)
        assert len(got) == len(reqs)
        for (_, kind), req, result in zip(group, reqs, got):
            if kind == "bad":
                assert isinstance(result, ValueError) and "cand" in str(result).lower()
                with pytest.raises(ValueError):
                    self.single.rank(req)
                continue
            assert isinstance(result, torch.Tensor) and result.shape == (req.cand_ids.numel(), TINY.num_tasks)
            torch.testing.assert_close(result, _reference(self.model, req), atol=ATOL, rtol=0)
            torch.testing.assert_close(result, self.single.rank(req), atol=ATOL, rtol=0)

    @rule(alpha=st.floats(0, 1))
    def move(self, alpha):
        for ranker in (self.grouped, self.single):
            ranker.set_alpha(alpha)
            ranker.step_background(0.01)

    @invariant()
    def pool_invariants_hold(self):
        if hasattr(self, "grouped"):
            self.grouped.pool.check_invariants()
            assert self.grouped.pool.kv_cache.pinned_users == 0  # every pin of a group ends with it


GroupMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_group_ranks_like_one_at_a_time = GroupMachine.TestCase


@pytest.mark.parametrize("in_place", [False, True])
def test_group_serves_repeated_users_in_order(in_place: bool) -> None:
    """A user twice in one group: the second request reuses the KV the first stored."""
    model = MODELS["production"]
    config = PoolConfig(64 * 1024, 1024, 0.3, 1e6, 2)
    with PooledRanker(model, config, background_interval_s=None, in_place=in_place) as ranker:
        gen = torch.Generator().manual_seed(1)
        ids, ts, acts = _events(gen, 20, 1_000_000)
        cands = torch.randint(0, TINY.num_items, (5,), generator=gen)
        first = RankRequest(3, ids[:12], ts[:12], acts[:12], cands, int(ts[11]) + 60)
        second = RankRequest(3, ids, ts, acts, cands, int(ts[-1]) + 60)
        a, b = ranker.rank_many([first, second])
        torch.testing.assert_close(a, _reference(model, first), atol=ATOL, rtol=0)
        torch.testing.assert_close(b, _reference(model, second), atol=ATOL, rtol=0)
        stats = ranker.stats()
        assert stats.kv_requests == 2 and stats.kv_hits == 1  # the second reused the first's 12 tokens


def test_in_place_pins_hold_the_group_s_pages_until_ranked() -> None:
    """While a group ranks from the pages, a shrinking KV side (alpha moved toward EMB) cannot
    evict its users, and after the group every pin is gone: the next move evicts them."""
    model = MODELS["production"]
    with PooledRanker(model, PoolConfig(16 * 1024, 1024, 0.0, 1e6, 16), background_interval_s=None, in_place=True) as ranker:
        gen = torch.Generator().manual_seed(5)
        reqs = []
        for user in range(3):
            ids, ts, acts = _events(gen, 4, 1_000_000)  # 4 tokens of 512 B: 2 pages a user
            reqs.append(RankRequest(user, ids, ts, acts, torch.randint(0, TINY.num_items, (3,), generator=gen), int(ts[-1]) + 1))
        ranker.rank_many(reqs)
        pool = ranker.pool
        found = pool.lookup_many([_query(r) for r in reqs], in_place=True)  # pins the three cached users
        ranker.set_alpha(1.0)
        ranker.step_background(0.01)
        assert pool.kv_cache.cached_users == 3  # nothing evictable: every KV user is pinned
        pool.unpin([r.user_id for r, f in zip(reqs, found) if f.prefix_len])
        ranker.step_background(0.01)
        assert pool.kv_cache.cached_users < 3
        pool.check_invariants()


def _query(req: RankRequest):
    from helmrec.pool.kv_cache import HistoryTokens
    from helmrec.pool.pool import LookupQuery

    return LookupQuery(req.user_id, HistoryTokens(req.hist_ids, req.hist_ts, req.hist_actions), req.hist_ids, req.cand_ids)
