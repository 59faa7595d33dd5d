"""Paged reads: a batch's histories read in place from the KV pool's pages through block tables.

Runs whichever backend `paged_candidate_attention` picks: the Triton kernel on a CUDA device
(or on the CPU under TRITON_INTERPRET=1), the fp32 reference gather elsewhere (the CPU CI).
"""

from __future__ import annotations

import pytest
import torch

from helmrec.kernels.attention import paged_candidate_attention, paged_causal_attention
from helmrec.kernels.reference import candidate_attention_reference, causal_attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max().clamp(min=1e-30))


def _paged(rows: torch.Tensor, tpp: int, pages: int, gen: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """`rows` [n, W] scattered over shuffled pages of `tpp` rows in a pool of `pages` pages whose other
    rows hold NaN (a kernel that reads past a request's pages or length shows it)."""
    pool = torch.full((pages, tpp, rows.shape[1]), float("nan"), dtype=rows.dtype, device=rows.device)
    need = -(-rows.shape[0] // tpp)
    order = torch.randperm(pages, generator=gen)[:need].tolist()
    for i, page in enumerate(order):
        chunk = rows[i * tpp : (i + 1) * tpp]
        pool[page, : chunk.shape[0]] = chunk
    return pool, order



def _paged_batch(lengths: list[int], tpp: int, width: int, dtype: torch.dtype, gen: torch.Generator):
    """Random histories of `lengths` rows of `width`, their pages appended to one shared pool (each
    request's shuffled, NaN in every unused row), and the batch's int32 block table."""
    histories = [torch.randn(n, width, generator=gen).to(DEVICE, dtype) for n in lengths]
    pool = torch.full((0, tpp, width), 0.0, dtype=dtype, device=DEVICE)
    tables = []
    for rows in histories:
        part, order = _paged(rows, tpp, max(1, -(-rows.shape[0] // tpp)) + 2, gen)
        tables.append([pool.shape[0] + p for p in order])
        pool = torch.cat([pool, part])
    blocks = max(1, max(len(t) for t in tables))
    block_table = torch.tensor([t + [0] * (blocks - len(t)) for t in tables], dtype=torch.int32, device=DEVICE)
    return histories, pool, block_table

@pytest.mark.parametrize("dtype", DTYPES)
# Pages of 102 and 64 tokens take the kernel's two-page path (a page holds a whole key tile); 16 and 10, its gather.
@pytest.mark.parametrize(
    "lengths,tpp,splits", [([0, 1, 37], 16, None), ([300, 129, 64], 102, None), ([200, 65, 128], 64, 2), ([250, 7], 10, 3)]
)
def test_paged_candidate_kernel_matches_reference_on_dense_histories(dtype, lengths, tpp, splits) -> None:
    """Histories read in place from shuffled pages (block tables, ragged lengths, NaN everywhere
    else in the pool) score as the dense reference on each request's own rows."""
    gen = torch.Generator().manual_seed(sum(lengths) + tpp)
    b, c, h, dqk, dv = len(lengths), 20, 2, 16, 32
    width = h * (dqk + dv)
    histories, pool, block_table = _paged_batch(lengths, tpp, width, dtype, gen)
    q = torch.randn(b, c, h, dqk, generator=gen).to(DEVICE, dtype)
    k_self = torch.randn(b, c, h, dqk, generator=gen).to(DEVICE, dtype)
    v_self = torch.randn(b, c, h, dv, generator=gen).to(DEVICE, dtype)
    k_pages = pool[..., : h * dqk].unflatten(-1, (h, dqk))
    v_pages = pool[..., h * dqk :].unflatten(-1, (h, dv))
    scale, norm = dqk**-0.5, 1.0 / 256
    got = paged_candidate_attention(
        q, k_pages, v_pages, block_table, torch.tensor(lengths, device=DEVICE), k_self, v_self, scale, norm, splits=splits
    )
    assert got.dtype == dtype and got.shape == (b, c, h, dv)
    for i, rows in enumerate(histories):
        k_hist, v_hist = rows[:, : h * dqk].view(-1, h, dqk), rows[:, h * dqk :].view(-1, h, dv)
        want = candidate_attention_reference(q[i], k_hist, v_hist, k_self[i], v_self[i], scale, norm)
        assert _rel_err(got[i], want) < REL_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths,m,tpp,splits", [([0, 1, 37], 5, 16, None), ([300, 129, 64], 40, 102, None), ([250, 7], 70, 10, 3)]
)
def test_paged_causal_kernel_matches_reference_on_dense_contexts(dtype, lengths, m, tpp, splits) -> None:
    """Extends of m new tokens over contexts read in place from shuffled pages equal the dense
    reference on each request's own context."""
    gen = torch.Generator().manual_seed(sum(lengths) + m)
    b, h, dqk, dv = len(lengths), 2, 16, 32
    width = h * (dqk + dv)
    contexts, pool, block_table = _paged_batch(lengths, tpp, width, dtype, gen)
    q = torch.randn(b, m, h, dqk, generator=gen).to(DEVICE, dtype)
    k_new = torch.randn(b, m, h, dqk, generator=gen).to(DEVICE, dtype)
    v_new = torch.randn(b, m, h, dv, generator=gen).to(DEVICE, dtype)
    k_pages = pool[..., : h * dqk].unflatten(-1, (h, dqk))
    v_pages = pool[..., h * dqk :].unflatten(-1, (h, dv))
    scale, norm = dqk**-0.5, 1.0 / 256
    got = paged_causal_attention(
        q, k_pages, v_pages, block_table, torch.tensor(lengths, device=DEVICE), k_new, v_new, scale, norm, splits=splits
    )
    assert got.dtype == dtype and got.shape == (b, m, h, dv)
    for i, rows in enumerate(contexts):
        k_ctx, v_ctx = rows[:, : h * dqk].view(-1, h, dqk), rows[:, h * dqk :].view(-1, h, dv)
        want = causal_attention_reference(q[i], k_ctx, v_ctx, k_new[i], v_new[i], scale, norm)
        assert _rel_err(got[i], want) < REL_TOL[dtype]


def test_paged_inputs_are_checked_by_name() -> None:
    q = torch.zeros(2, 3, 2, 16)
    pages = torch.zeros(4, 8, 2 * 32)
    k_pages, v_pages = pages[..., :32].unflatten(-1, (2, 16)), pages[..., 32:].unflatten(-1, (2, 16))
    selfs = torch.zeros(2, 3, 2, 16)
    table, lengths = torch.zeros(2, 1, dtype=torch.int32), torch.tensor([3, 8])
    with pytest.raises(ValueError, match="block_table: must be int32"):
        paged_candidate_attention(q, k_pages, v_pages, table.long(), lengths, selfs, selfs, 1.0, 1.0)
    with pytest.raises(ValueError, match="lengths: must be int64"):
        paged_candidate_attention(q, k_pages, v_pages, table, lengths.int(), selfs, selfs, 1.0, 1.0)
    with pytest.raises(ValueError, match="k_pages, v_pages: must be views of the same page rows"):
        paged_candidate_attention(q, k_pages, v_pages.contiguous(), table, lengths, selfs, selfs, 1.0, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_paged_rank_graphs_equal_the_fused_rank_across_lengths_and_batches() -> None:
    """Histories stored in a pool's pages (shuffled pages, NaN in every unused row), ranked by
    `PagedRank` alone and in batches, longer then shorter in one bucket: the scores equal
    `FusedHSTU.rank` on each history's dense K/V, and stale block-table rows never leak."""
    import dataclasses

    from helmrec.fastpath.fused_model import FusedHSTU
    from helmrec.fastpath.graphed_rank import RankBuckets
    from helmrec.fastpath.paged_rank import PagedInput, PagedRank
    from helmrec.hstu.config import preset
    from helmrec.hstu.model import HSTU

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), variant="production", max_seq_len=256, max_candidates=128)
    model = HSTU(cfg).eval().to("cuda")
    fused = FusedHSTU(model)
    tpp, num_pages = 10, 200
    pool = torch.full((num_pages, cfg.num_layers, tpp, model.kv_width), float("nan"), device="cuda")
    free = torch.randperm(num_pages, generator=torch.Generator().manual_seed(1)).tolist()
    graphed = PagedRank(fused, pool, RankBuckets(history_step=64, candidate_step=32))
    gen = torch.Generator().manual_seed(2)
    query = 1_800_000_000
    made = []
    for n, c in [(120, 30), (37, 5), (128, 32), (0, 7), (200, 60), (61, 1)]:
        ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (n,), generator=gen), 0)
        with torch.no_grad():
            emb = model.embed_items(torch.randint(0, cfg.num_items, (n,), generator=gen).cuda())
            kv = fused.prefill(emb, ts.cuda(), torch.randint(0, cfg.num_actions, (n,), generator=gen).cuda())
            cand = model.embed_items(torch.randint(0, cfg.num_items, (c,), generator=gen).cuda())
            want = fused.rank(kv, ts.cuda(), cand, torch.tensor(query, device="cuda"))
        pages = [free.pop() for _ in range(-(-n // tpp))]
        for i, page in enumerate(pages):
            rows = kv[:, i * tpp : (i + 1) * tpp]
            pool[page, :, : rows.shape[1]] = rows
        made.append((PagedInput(pages, n, cand, query - int(ts[-1]) if n else 0), want))
    for batch in ([made[0]], [made[1]], made[:3], made[2:], made):
        for got, (_, want) in zip(graphed.rank_many([r for r, _ in batch]), batch):
            torch.testing.assert_close(got, want.cpu(), atol=1e-5, rtol=1e-4)


def test_ranking_from_pages_equals_ranking_the_dense_history() -> None:
    """A batch ranked from the pool's pages (read inside the attention loop) scores as
    `FusedHSTU.rank` on each request's own dense K/V; unused page rows hold NaN, so a row read
    past a request's length would show."""
    import dataclasses

    from helmrec.fastpath.fused_model import FusedHSTU
    from helmrec.hstu.config import preset
    from helmrec.hstu.model import HSTU

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), variant="production", max_seq_len=256, max_candidates=64)
    model = HSTU(cfg).eval().to(DEVICE)
    fused = FusedHSTU(model)
    tpp, lengths, c = 16, [70, 0, 33, 128], 9
    gen = torch.Generator().manual_seed(3)
    pool = torch.full((40, cfg.num_layers, tpp, model.kv_width), float("nan"), device=DEVICE)
    free = torch.randperm(40, generator=gen).tolist()
    tables, wants, cands, gaps = [], [], [], []
    with torch.no_grad():
        for n in lengths:
            ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (max(n, 1),), generator=gen), 0)[:n]
            emb = model.embed_items(torch.randint(0, cfg.num_items, (n,), generator=gen).to(DEVICE))
            kv = fused.prefill(emb, ts.to(DEVICE), torch.randint(0, cfg.num_actions, (n,), generator=gen).to(DEVICE))
            cand = model.embed_items(torch.randint(0, cfg.num_items, (c,), generator=gen).to(DEVICE))
            query = (int(ts[-1]) if n else 1_700_000_000) + 600
            wants.append(fused.rank(kv, ts.to(DEVICE), cand, torch.tensor(query, device=DEVICE)))
            pages = [free.pop() for _ in range(-(-n // tpp))]
            for i, page in enumerate(pages):
                rows = kv[:, i * tpp : (i + 1) * tpp]
                pool[page, :, : rows.shape[1]] = rows
            tables.append(pages + [0] * (128 // tpp - len(pages)))
            cands.append(cand)
            gaps.append(query - int(ts[-1]) if n else 0)
        got = fused.rank_paged_core(
            pool,
            torch.tensor(tables, dtype=torch.int32, device=DEVICE),
            torch.tensor(lengths, device=DEVICE),
            torch.tensor(gaps, device=DEVICE),
            torch.stack(cands),
        )
    for g, want in zip(got, wants):
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)
