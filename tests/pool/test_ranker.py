"""PooledRanker with the real HSTU (tiny preset, random weights): cached scores equal uncached ones."""

import dataclasses
import threading

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from helmrec import schema
from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.pool.config import PoolConfig
from helmrec.pool.ranker import PooledRanker, RankRequest

torch.set_num_threads(1)
TINY = preset("tiny")
ATOL = 1e-5


def _model(variant: str = "research", seed: int = 0) -> HSTU:
    torch.manual_seed(seed)
    return HSTU(dataclasses.replace(TINY, variant=variant)).eval()


def _config(pages: int = 24, alpha: float = 0.5, max_move: int = 2) -> PoolConfig:
    # tiny: one KV token = 2 layers x 64 wide x 4 B = 512 B; one row = 32 x 4 B = 128 B.
    return PoolConfig(pages * 1024, 1024, alpha, 1e6, max_move)


def _history(gen: torch.Generator, n: int, start_ts: int = 1_000_000):
    ids = torch.randint(0, TINY.num_items, (n,), generator=gen)
    ts = start_ts + torch.cumsum(torch.randint(1, 5000, (n,), generator=gen), 0)
    acts = torch.randint(0, TINY.num_actions, (n,), generator=gen)
    return ids, ts, acts


def _reference(model: HSTU, req: RankRequest) -> torch.Tensor:
    with torch.inference_mode():
        return model.score(req.hist_ids, req.hist_ts, req.hist_actions, req.cand_ids, req.query_ts)


class RankerMachine(RuleBasedStateMachine):
    model = _model()

    @initialize(pages=st.integers(4, 64), alpha=st.floats(0, 1), max_move=st.integers(1, 4), seed=st.integers(0, 99))
    def setup(self, pages, alpha, max_move, seed):
        self.ranker = PooledRanker(self.model, _config(pages, alpha, max_move), background_interval_s=None)
        self.gen = torch.Generator().manual_seed(seed)
        self.histories: dict[int, tuple[torch.Tensor, ...]] = {}

    def teardown(self):
        if hasattr(self, "ranker"):
            self.ranker.close()

    @rule(user=st.integers(0, 4), grow=st.integers(-3, 12), cands=st.integers(1, 12))
    def request(self, user, grow, cands):
        old = self.histories.get(user)
        if old is None or grow < 0:  # new user, or a rewritten history
            hist = _history(self.gen, int(torch.randint(0, 24, (1,), generator=self.gen)))
        else:
            room = TINY.max_seq_len - old[0].numel()
            add = _history(self.gen, min(grow, room), start_ts=int(old[1][-1]) if old[1].numel() else 1_000_000)
            hist = tuple(torch.cat([a, b]) for a, b in zip(old, add))
        ids, ts, acts = hist
        cand = torch.randint(0, TINY.num_items, (cands,), generator=self.gen)
        query_ts = (int(ts[-1]) if ts.numel() else 1_000_000) + 60
        req = RankRequest(user, ids, ts, acts, cand, query_ts)
        before = self.ranker.pool.kv_cache.cached_length(user)
        scores = self.ranker.rank(req)
        event("kv reuse" if before and old is not None and grow >= 0 else "kv miss")
        assert scores.dtype == torch.float32 and scores.shape == (cands, TINY.num_tasks)
        torch.testing.assert_close(scores, _reference(self.model, req), atol=ATOL, rtol=0)
        self.histories[user] = hist

    @rule(alpha=st.floats(0, 1))
    def set_alpha(self, alpha):
        self.ranker.set_alpha(alpha)

    @rule(elapsed_ms=st.integers(0, 20))
    def background(self, elapsed_ms):
        self.ranker.step_background(elapsed_ms / 1000)

    @invariant()
    def consistent(self):
        if hasattr(self, "ranker"):
            self.ranker.pool.check_invariants()


RankerMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestRankerStateful = RankerMachine.TestCase


@pytest.mark.parametrize("variant,in_place", [("research", False), ("production", False), ("production", True)])
def test_hit_partial_and_miss_match_uncached_scores(variant, in_place):
    model = _model(variant, seed=3)
    gen = torch.Generator().manual_seed(3)
    ids, ts, acts = _history(gen, 50)
    cand = torch.randint(0, TINY.num_items, (16,), generator=gen)
    with PooledRanker(model, _config(pages=96), background_interval_s=None, in_place=in_place) as ranker:
        for n in (30, 30, 45, 50, 20):  # miss, full hit, partial, partial, shorter history -> miss
            req = RankRequest(9, ids[:n], ts[:n], acts[:n], cand, int(ts[n - 1]) + 30)
            torch.testing.assert_close(ranker.rank(req), _reference(model, req), atol=ATOL, rtol=0)
        stats = ranker.stats()
    assert (stats.requests, stats.kv_requests, stats.kv_hits, stats.kv_partial_hits) == (5, 5, 3, 2)
    assert stats.kv_tokens == 175 and stats.kv_hit_tokens == 30 + 30 + 45
    assert stats.hot_user_requests == 4 and stats.mean_history_len == 35.0
    # EMB is looked up only for history the KV prefix did not cover, plus candidates.
    assert stats.emb_lookups == (30 + 0 + 15 + 5 + 20) + 5 * 16
    assert stats.h2d_critical_bytes == (stats.emb_lookups - stats.emb_hits) * TINY.d_model * 4


def test_background_admission_turns_misses_into_hits():
    model = _model()
    cand = torch.arange(20)
    empty = torch.empty(0, dtype=torch.int64)
    with PooledRanker(model, _config(alpha=1.0), background_interval_s=None) as ranker:
        ranker.rank(RankRequest(1, empty, empty, empty, cand, 10))
        first = ranker.stats()
        ranker.step_background(1.0)  # 1 MB/s for 1 s: room for every missed row
        ranker.rank(RankRequest(2, empty, empty, empty, cand, 10))
        second = ranker.stats()
    assert first.emb_hits == 0 and first.h2d_critical_bytes == 20 * 128
    assert second.emb_hits == 20 and second.h2d_critical_bytes == 0
    assert first.h2d_background_bytes == 0 and second.h2d_background_bytes == 20 * 128


def test_refill_is_throttled_to_the_bandwidth_share():
    model = _model()
    empty = torch.empty(0, dtype=torch.int64)
    with PooledRanker(model, _config(alpha=1.0), background_interval_s=None) as ranker:
        ranker.rank(RankRequest(1, empty, empty, empty, torch.arange(64), 10))
        ranker.stats()
        ranker.step_background(0.001)  # 1 MB/s x 1 ms = 1000 B: 7 rows of 128 B
        assert ranker.stats().h2d_background_bytes == 7 * 128


def test_alpha_moves_in_bounded_steps_off_the_request_path():
    with PooledRanker(_model(), _config(pages=20, alpha=0.1, max_move=3), background_interval_s=None) as ranker:
        ranker.set_alpha(0.9)
        assert ranker.alpha == 0.1 and ranker.target_alpha == 0.9
        seen = []
        while ranker.alpha != ranker.target_alpha:
            ranker.step_background(0.0)
            seen.append(round(ranker.alpha * 20))
        assert seen == [5, 8, 11, 14, 17, 18]


def test_concurrent_requests_alpha_moves_and_background_thread():
    """The real background thread runs while two request threads and a controller thread race."""
    model = _model(seed=5)
    errors: list[BaseException] = []
    with PooledRanker(model, _config(pages=12), background_interval_s=0.0005) as ranker:

        def client(seed: int) -> None:
            gen = torch.Generator().manual_seed(seed)
            ids, ts, acts = _history(gen, 60)
            try:
                for _ in range(25):
                    user = int(torch.randint(0, 4, (1,), generator=gen))
                    n = int(torch.randint(1, 61, (1,), generator=gen))
                    cand = torch.randint(0, TINY.num_items, (8,), generator=gen)
                    req = RankRequest(user + 10 * seed, ids[:n], ts[:n], acts[:n], cand, int(ts[n - 1]) + 1)
                    torch.testing.assert_close(ranker.rank(req), _reference(model, req), atol=ATOL, rtol=0)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        def controller() -> None:
            for i in range(40):
                ranker.set_alpha((0.1, 0.9)[i % 2])
                ranker.stats()
                threading.Event().wait(0.002)

        threads = [threading.Thread(target=client, args=(s,)) for s in (1, 2)] + [threading.Thread(target=controller)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ranker.background_error is None
        ranker.pool.check_invariants()
    assert not errors, errors[0]


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("hist_ids", torch.tensor([[1, 2]]), r"HISTORY_ITEM_IDS: must be a 1-D tensor"),
        ("hist_ts", torch.tensor([1]), r"HISTORY_TIMESTAMPS: length 1 must equal the length of HISTORY_ITEM_IDS \(2\)"),
        ("cand_ids", torch.empty(0, dtype=torch.int64), "CANDIDATE_ITEM_IDS: must hold at least one candidate"),
        ("cand_ids", torch.tensor([TINY.num_items]), r"CANDIDATE_ITEM_IDS: item ids must lie in \[0, 300\)"),
        ("hist_actions", torch.tensor([0, 2]), r"HISTORY_ACTIONS: action ids must lie in \[0, 2\)"),
        ("hist_ids", torch.tensor([-1, 2]), r"HISTORY_ITEM_IDS: item ids must lie in \[0, 300\)"),
        ("hist_ids", torch.tensor([1.0, 2.0]), "HISTORY_ITEM_IDS: must hold integers"),
        ("user_id", "7", "USER_ID: must hold integers"),
        ("user_id", -1, "USER_ID: must be >= 0"),
    ],
)
def test_a_library_request_is_held_to_the_schema_before_the_pool(field, value, match):
    """A caller who builds RankRequest by hand gets the rule and the public tensor it broke."""
    fields = dict(user_id=7, hist_ids=torch.tensor([1, 2]), hist_ts=torch.tensor([5, 6]),
                  hist_actions=torch.tensor([0, 1]), cand_ids=torch.tensor([3]), query_ts=9)
    fields[field] = value
    with PooledRanker(_model(), _config(), background_interval_s=None) as ranker:
        with pytest.raises(schema.RequestError, match=match):
            ranker.rank(RankRequest(**fields))
        assert ranker.stats().emb_lookups == 0


def test_one_bad_request_of_a_group_fails_alone():
    model = _model()
    gen = torch.Generator().manual_seed(4)
    ids, ts, acts = _history(gen, 6)
    good = RankRequest(1, ids, ts, acts, torch.tensor([3, 4]), int(ts[-1]) + 5)
    bad = dataclasses.replace(good, user_id=2, cand_ids=torch.tensor([TINY.num_items]))
    with PooledRanker(model, _config(), background_interval_s=None) as ranker:
        first, second = ranker.rank_many([bad, good])
    assert isinstance(first, schema.RequestError) and first.tensor == schema.CANDIDATE_ITEM_IDS
    torch.testing.assert_close(second, _reference(model, good), atol=ATOL, rtol=0)
