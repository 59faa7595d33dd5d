"""The Triton kernels equal the fp32 reference on fresh random inputs.

Runs on a CUDA device with `triton` installed (fp32, bf16, fp16), or on the CPU
under Triton's interpreter (TRITON_INTERPRET=1, fp32 only); skipped elsewhere,
e.g. in the CPU CI venv, which has no `triton`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helmrec.fastpath.fused_model import FusedHSTU
from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.kernels.attention import candidate_attention, causal_attention, supported
from helmrec.kernels.reference import candidate_attention_reference, causal_attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not supported(torch.empty(0, device=DEVICE)), reason="needs CUDA + triton, or triton with TRITON_INTERPRET=1"
)
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])
# Largest error relative to the reference's largest magnitude: fp32 is exact up to
# summation order; bf16/fp16 round the inputs and the SiLU weights before each matmul.
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
torch.set_num_threads(1)


def _kv_views(n: int, h: int, dqk: int, dv: int, dtype: torch.dtype, gen: torch.Generator):
    """K and V as the KV cache stores them: strided views of one [n, H*(dqk+dv)] row block."""
    rows = torch.randn(n, h * (dqk + dv), generator=gen).to(DEVICE, dtype)
    return rows[:, : h * dqk].view(n, h, dqk), rows[:, h * dqk :].view(n, h, dv)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n0,m,h,dqk,dv,splits",
    [(0, 1, 2, 16, 16, None), (0, 100, 2, 32, 32, None), (37, 5, 3, 16, 32, None), (130, 70, 2, 24, 40, 3),
     (64, 64, 1, 16, 16, 2), (5, 200, 2, 32, 16, 4)],
)
def test_causal_kernel_matches_reference(dtype, n0, m, h, dqk, dv, splits) -> None:
    gen = torch.Generator().manual_seed(n0 * 1000 + m)
    q = torch.randn(m, h, dqk, generator=gen).to(DEVICE, dtype)
    k_ctx, v_ctx = _kv_views(n0, h, dqk, dv, dtype, gen)
    k_new, v_new = _kv_views(m, h, dqk, dv, dtype, gen)
    scale, norm = dqk**-0.5, 1.0 / 256
    got = causal_attention(q, k_ctx, v_ctx, k_new, v_new, scale, norm, splits=splits)
    want = causal_attention_reference(q, k_ctx, v_ctx, k_new, v_new, scale, norm)
    assert got.dtype == dtype and got.shape == (m, h, dv)
    assert _rel_err(got, want) < REL_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n,c,h,dqk,dv,splits",
    [(0, 4, 2, 16, 16, None), (1, 1, 1, 16, 16, None), (300, 40, 2, 32, 32, None), (129, 17, 3, 24, 16, 5),
     (64, 130, 2, 16, 32, 1)],
)
def test_candidate_kernel_matches_reference(dtype, n, c, h, dqk, dv, splits) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c)
    q = torch.randn(c, h, dqk, generator=gen).to(DEVICE, dtype)
    k_hist, v_hist = _kv_views(n, h, dqk, dv, dtype, gen)
    k_self, v_self = _kv_views(c, h, dqk, dv, dtype, gen)
    scale, norm = dqk**-0.5, 1.0 / 256
    got = candidate_attention(q, k_hist, v_hist, k_self, v_self, scale, norm, splits=splits)
    want = candidate_attention_reference(q, k_hist, v_hist, k_self, v_self, scale, norm)
    assert got.dtype == dtype and got.shape == (c, h, dv)
    assert _rel_err(got, want) < REL_TOL[dtype]


def test_split_count_does_not_change_the_result() -> None:
    """Key chunks sum in fp32; any split gives the same answer up to summation order."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(50, 2, 16, generator=gen).to(DEVICE)
    k, v = _kv_views(500, 2, 16, 16, torch.float32, gen)
    ks, vs = _kv_views(50, 2, 16, 16, torch.float32, gen)
    one = candidate_attention(q, k, v, ks, vs, 0.25, 0.01, splits=1)
    for splits in (2, 3, 8):
        torch.testing.assert_close(candidate_attention(q, k, v, ks, vs, 0.25, 0.01, splits=splits), one, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_model_scores_match_fp32_model(dtype) -> None:
    """Partial KV hit + rank through the kernels in `dtype` vs the fp32 HSTU on the CPU."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), variant="production", max_seq_len=256, max_candidates=128)
    ref = HSTU(cfg).eval()
    model = HSTU(cfg).eval()
    model.load_state_dict(ref.state_dict())
    model = model.to(DEVICE, dtype)
    gen = torch.Generator().manual_seed(1)
    n0, n1, c = 150, 40, 100
    ids = torch.randint(0, cfg.num_items, (n0 + n1,), generator=gen)
    ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (n0 + n1,), generator=gen), 0)
    actions = torch.randint(0, cfg.num_actions, (n0 + n1,), generator=gen)
    cand = torch.randint(0, cfg.num_items, (c,), generator=gen)
    query = int(ts[-1]) + 600
    with torch.no_grad():
        want = ref.forward(ref.embed_items(ids), ts, actions, ref.embed_items(cand), query)
        fused = FusedHSTU(model)
        d_ids, d_ts, d_act = ids.to(DEVICE), ts.to(DEVICE), actions.to(DEVICE)
        emb = model.embed_items(d_ids)
        kv0 = fused.prefill(emb[:n0], d_ts[:n0], d_act[:n0])
        kv = torch.cat([kv0, fused.extend_suffix(kv0, emb[n0:], d_ts, d_act[n0:])], dim=1)
        got = fused.rank(kv, d_ts, model.embed_items(cand.to(DEVICE)), torch.tensor(query, device=DEVICE))
    assert got.dtype == torch.float32 and got.shape == (c, cfg.num_tasks)
    assert _rel_err(got.cpu(), want) < {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_kernels_match_reference(dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    b, n, m, h, d = 3, 150, 40, 2, 32
    q = torch.randn(b, m, h, d, generator=gen).to(DEVICE, dtype)
    k, v = (torch.randn(b, n, h, d, generator=gen).to(DEVICE, dtype) for _ in range(2))
    k2, v2 = (torch.randn(b, m, h, d, generator=gen).to(DEVICE, dtype) for _ in range(2))
    for op, ref in ((candidate_attention, candidate_attention_reference), (causal_attention, causal_attention_reference)):
        got = op(q, k, v, k2, v2, d**-0.5, 1 / 256, splits=2)
        assert got.shape == (b, m, h, d)
        assert _rel_err(got, ref(q, k, v, k2, v2, d**-0.5, 1 / 256)) < REL_TOL[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_rank_equals_fused_rank_across_lengths_and_batches() -> None:
    """Longer, then shorter histories in one bucket, alone and batched: stale rows never leak into a later request."""
    from helmrec.fastpath.graphed_rank import GraphedRank, RankBuckets, RankInput

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), variant="production", max_seq_len=256, max_candidates=128)
    model = HSTU(cfg).eval().to("cuda")
    fused = FusedHSTU(model)
    graphed = GraphedRank(fused, RankBuckets(history_step=128, candidate_step=32))
    gen = torch.Generator().manual_seed(2)
    query = 1_800_000_000
    made = []
    for n, c in [(120, 30), (37, 5), (128, 32), (0, 7), (200, 60)]:
        ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (n,), generator=gen), 0)
        with torch.no_grad():
            emb = model.embed_items(torch.randint(0, cfg.num_items, (n,), generator=gen).cuda())
            kv = fused.prefill(emb, ts.cuda(), torch.randint(0, cfg.num_actions, (n,), generator=gen).cuda())
            cand = model.embed_items(torch.randint(0, cfg.num_items, (c,), generator=gen).cuda())
            want = fused.rank(kv, ts.cuda(), cand, torch.tensor(query, device="cuda"))
        torch.testing.assert_close(graphed.rank(kv, ts, cand, query), want, atol=1e-5, rtol=1e-4)
        made.append((RankInput(kv, cand, query - int(ts[-1]) if n else 0), want))
    for batch in (made[:3], made[2:], made):
        for got, (_, want) in zip(graphed.rank_many([r for r, _ in batch]), batch):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_prefill_equals_fused_prefill_across_buckets() -> None:
    """Lengths inside, at and across bucket edges, longer then shorter in one bucket (stale padding
    must not leak), and the last bucket capped at max_seq_len: the K/V equals the eager prefill's."""
    from helmrec.fastpath.graphed_prefill import GraphedPrefill

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), variant="production", max_seq_len=300, max_candidates=128)
    model = HSTU(cfg).eval().to("cuda")
    fused = FusedHSTU(model)
    graphed = GraphedPrefill(fused, step=128)
    gen = torch.Generator().manual_seed(3)
    for n in (100, 37, 128, 1, 129, 300, 250):
        ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (n,), generator=gen), 0)
        actions = torch.randint(0, cfg.num_actions, (n,), generator=gen).cuda()
        with torch.no_grad():
            emb = model.embed_items(torch.randint(0, cfg.num_items, (n,), generator=gen).cuda())
            want = fused.prefill(emb, ts.cuda(), actions)
        got = graphed.prefill(emb, ts.cuda(), actions)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert sorted(graphed._graphs) == [128, 256, 300]
    with pytest.raises(ValueError, match="1..300 tokens"):
        graphed.prefill(emb[:0], ts[:0].cuda(), actions[:0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_extend_equals_fused_extend_across_buckets() -> None:
    """Cached lengths and new-token counts inside, at and across bucket edges, a longer context
    before a shorter one in the same buffer (stale rows must not leak), and a cached length whose
    padded bucket would run past max_seq_len: the new tokens' K/V equals the eager extend's."""
    from helmrec.fastpath.graphed_extend import GraphedExtend

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), variant="production", max_seq_len=300, max_candidates=128)
    model = HSTU(cfg).eval().to("cuda")
    fused = FusedHSTU(model)
    graphed = GraphedExtend(fused, context_step=128, new_step=8, max_new=16)
    gen = torch.Generator().manual_seed(4)
    for n0, m in ((100, 3), (37, 8), (128, 1), (129, 16), (250, 9), (290, 10), (60, 5)):
        n = n0 + m
        ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (n,), generator=gen), 0).cuda()
        actions = torch.randint(0, cfg.num_actions, (n,), generator=gen).cuda()
        with torch.no_grad():
            emb = model.embed_items(torch.randint(0, cfg.num_items, (n,), generator=gen).cuda())
            kv = fused.prefill(emb[:n0], ts[:n0], actions[:n0])
            want = fused.extend_suffix(kv, emb[n0:], ts, actions[n0:])
        got = graphed.extend_suffix(kv, emb[n0:], ts, actions[n0:])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not graphed.applies(0, 5) and not graphed.applies(10, 17)
    with pytest.raises(ValueError, match="1..16 new tokens"):
        graphed.extend_suffix(kv, emb[:17], ts, actions[:17])
