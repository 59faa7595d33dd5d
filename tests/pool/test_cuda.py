"""The same pool code on a GPU: side-stream miss copies, pinned host table, refill stream.

Skipped where torch sees no CUDA device (CI); run on a GPU host.
"""

import dataclasses
import threading

import pytest
import torch

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.pool.config import PoolConfig
from helmrec.pool.ranker import PooledRanker, RankRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("variant", ["research", "production"])
def test_cuda_ranker_matches_uncached_scores_under_alpha_moves(variant):
    torch.manual_seed(0)
    model = HSTU(dataclasses.replace(preset("tiny"), variant=variant)).eval().to("cuda")
    config = PoolConfig(64 * 4096, 4096, 0.5, 1e8, 4, device="cuda")
    gen = torch.Generator().manual_seed(0)
    errors = []
    with PooledRanker(model, config, background_interval_s=0.0005) as ranker:
        assert ranker.pool.storage.device.type == "cuda"
        assert ranker.pool.host_table.table.is_pinned()

        def controller():
            for i in range(30):
                ranker.set_alpha((0.1, 0.9)[i % 2])
                threading.Event().wait(0.003)

        thread = threading.Thread(target=controller)
        thread.start()
        try:
            for _ in range(120):
                user = int(torch.randint(0, 6, (1,), generator=gen))
                n = int(torch.randint(0, 64, (1,), generator=gen))
                ids = torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(user))[:n]
                ts = 1_000_000 + 60 * torch.arange(n)
                acts = ids % 2
                cand = torch.randint(0, 300, (16,), generator=gen)
                req = RankRequest(user, ids, ts, acts, cand, 1_000_000 + 60 * n + 5)
                got = ranker.rank(req)
                with torch.inference_mode():
                    ref = model.score(ids.cuda(), ts.cuda(), acts.cuda(), cand.cuda(), req.query_ts).cpu()
                torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        except BaseException as exc:
            errors.append(exc)
        thread.join()
        assert ranker.background_error is None
        ranker.pool.check_invariants()
        stats = ranker.stats()
    assert not errors, errors[0]
    assert stats.kv_hits > 0 and stats.emb_hits > 0 and stats.h2d_background_bytes > 0


def test_graphs_captured_while_the_background_thread_copies_do_not_fail():
    """A new rank bucket captures a CUDA graph on the request thread while the pool's background
    thread may be refilling. In CUDA's default (global) capture mode, an unsafe call from another
    thread during the capture (an allocation, a lazy module load, a synchronous copy) invalidates
    it and fails the request: seen once, on the first run on a fresh H100 host, with the `large`
    preset right after start, while the refill streamed the item table into an empty EMB cache.
    The race is timing-dependent (later runs of the unfixed code did not hit it); this drives the
    same situation (same sizes: 1 KiB bf16 rows, 0.5 MiB per background round; four captures)
    against the fix: captures hold the lock the background round holds, in thread_local mode."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = HSTU(preset("large")).eval()
    model = model.to(torch.bfloat16)
    config = PoolConfig(2 << 30, 1 << 20, 0.5, 268435456.0, 8, device="cuda")
    gen = torch.Generator().manual_seed(0)
    with PooledRanker(model, config) as ranker:
        if ranker._graphs is None:
            pytest.skip("the triton package is absent: no graphed steps")
        for step, n in enumerate((512, 1024, 1536, 2048)):
            ids = torch.randint(0, model.config.num_items, (n,), generator=gen)
            ts = 1_600_000_000 + 60 * torch.arange(n)
            cands = torch.randint(0, model.config.num_items, (256,), generator=gen)
            scores = ranker.rank(RankRequest(step, ids, ts, ids % 2, cands, int(ts[-1])))
            assert scores.shape == (256, model.config.num_tasks) and bool(torch.isfinite(scores).all())
        assert len(ranker._graphs.rank._graphs) == 4
        assert ranker.background_error is None
        assert ranker.stats().h2d_background_bytes > 0


def test_cuda_groups_extend_and_rank_in_place_like_the_uncached_network():
    """Groups of returning users (1-5 new events: batched PagedExtend replays), exact repeats and new
    users, ranked together from pages that hold whole key tiles (the kernels' two-page path) and in
    batches (PagedRank): every score equals the uncached network's, and no pin outlives its group."""
    torch.manual_seed(0)
    model = HSTU(dataclasses.replace(preset("tiny"), variant="production", max_seq_len=256)).eval().to("cuda")
    config = PoolConfig(64 * 65536, 65536, 0.25, 1e8, 4, device="cuda")  # 128 fp32 tokens of `tiny` a page
    gen = torch.Generator().manual_seed(1)
    lengths = dict.fromkeys(range(12), 0)
    with PooledRanker(model, config, background_interval_s=None) as ranker:
        if ranker._graphs is None:
            pytest.skip("the triton package is absent: no graphed steps")
        for _ in range(6):
            group = []
            for user in torch.randperm(12, generator=gen)[:8].tolist():
                grow = int(torch.randint(0, 6, (1,), generator=gen))  # 0: the same history again
                n = lengths[user] = 150 if lengths[user] == 0 else min(200, lengths[user] + grow)
                ids = torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(user))[:n]
                ts = 1_000_000 + 60 * torch.arange(n)
                cand = torch.randint(0, 300, (int(torch.randint(1, 40, (1,), generator=gen)),), generator=gen)
                group.append(RankRequest(user, ids, ts, ids % 2, cand, 1_000_000 + 60 * n + 5))
            for req, got in zip(group, ranker.rank_many(group)):
                history = (t.cuda() for t in (req.hist_ids, req.hist_ts, req.hist_actions))
                with torch.inference_mode():
                    ref = model.score(*history, req.cand_ids.cuda(), req.query_ts)
                torch.testing.assert_close(got, ref.cpu(), atol=1e-4, rtol=1e-4)
            assert ranker.pool.kv_cache.pinned_users == 0
        ranker.pool.check_invariants()
        stats = ranker.stats()
    assert stats.kv_hits > 0 and stats.kv_partial_hits > 0
