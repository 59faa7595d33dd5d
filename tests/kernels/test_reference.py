"""The fused-attention ops, put into HSTU's layer and model, change nothing (CPU, fp32).

On CPU the ops run their fp32 reference (or the Triton kernels under
TRITON_INTERPRET=1), so these tests pin the ops' *definition* to the layer's
masked einsum attention and `FusedHSTU` to `HSTU.extend` / `HSTU.rank`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helmrec.fastpath.fused_model import FusedHSTU, layer_extend, layer_rank
from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.kernels.attention import candidate_attention, causal_attention

torch.set_num_threads(1)
ATOL = 1e-5


def _production(seed: int = 0) -> HSTU:
    torch.manual_seed(seed)
    model = HSTU(dataclasses.replace(preset("tiny"), variant="production")).eval()
    with torch.no_grad():
        model.target_marker.normal_()
    return model


def _history(model: HSTU, n: int, gen: torch.Generator):
    cfg = model.config
    ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 10**6, (n,), generator=gen), 0)
    return (
        model.embed_items(torch.randint(0, cfg.num_items, (n,), generator=gen)),
        ts,
        torch.randint(0, cfg.num_actions, (n,), generator=gen),
    )


@pytest.mark.parametrize("n0,m", [(0, 1), (0, 17), (5, 1), (9, 12), (40, 24)])
def test_layer_extend_matches_layer_forward(n0: int, m: int) -> None:
    layer = _production().layers[0]
    cfg = layer.cfg
    gen = torch.Generator().manual_seed(n0 * 100 + m)
    x = torch.randn(m, cfg.d_model, generator=gen)
    k_ctx = torch.randn(n0, cfg.num_heads, cfg.d_qk, generator=gen)
    v_ctx = torch.randn(n0, cfg.num_heads, cfg.d_v, generator=gen)
    keep = torch.arange(n0 + m).unsqueeze(0) <= torch.arange(n0, n0 + m).unsqueeze(1)
    with torch.no_grad():
        want = layer(x, k_ctx, v_ctx, keep, None)
        got = layer_extend(layer, x, k_ctx, v_ctx)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("n,c", [(0, 3), (1, 1), (30, 7), (64, 64)])
def test_layer_rank_matches_forward_candidates(n: int, c: int) -> None:
    layer = _production().layers[1]
    cfg = layer.cfg
    gen = torch.Generator().manual_seed(n * 100 + c)
    x = torch.randn(c, cfg.d_model, generator=gen)
    k_hist = torch.randn(n, cfg.num_heads, cfg.d_qk, generator=gen)
    v_hist = torch.randn(n, cfg.num_heads, cfg.d_v, generator=gen)
    with torch.no_grad():
        want = layer.forward_candidates(x, k_hist, v_hist, None, None)
        got = layer_rank(layer, x, k_hist, v_hist)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("n0,n1", [(0, 20), (13, 1), (13, 30), (50, 14)])
def test_fused_model_matches_cached_and_uncached_model(n0: int, n1: int) -> None:
    """Partial KV hit (extend) and full prefill through FusedHSTU equal HSTU's; rank equals forward."""
    model = _production(seed=n0 + n1)
    fused = FusedHSTU(model)
    gen = torch.Generator().manual_seed(n0 + 7 * n1)
    emb, ts, actions = _history(model, n0 + n1, gen)
    cand = model.embed_items(torch.randint(0, model.config.num_items, (9,), generator=gen))
    query = int(ts[-1]) + 3600
    with torch.no_grad():
        kv0 = model.prefill(emb[:n0], ts[:n0], actions[:n0])
        torch.testing.assert_close(fused.prefill(emb[:n0], ts[:n0], actions[:n0]), kv0, atol=ATOL, rtol=1e-5)
        want_kv = model.extend(kv0, emb[n0:], ts, actions[n0:])
        got_kv = torch.cat([kv0, fused.extend_suffix(kv0, emb[n0:], ts, actions[n0:])], dim=1)
        torch.testing.assert_close(got_kv, want_kv, atol=ATOL, rtol=1e-5)
        got = fused.rank(got_kv, ts, cand, torch.tensor(query))
        torch.testing.assert_close(got, model.rank(want_kv, ts, cand, query), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(got, model.forward(emb, ts, actions, cand, query), atol=1e-4, rtol=1e-4)


def test_fused_model_rejects_research_variant() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="variant must be 'production'"):
        FusedHSTU(HSTU(preset("tiny")))


def test_bad_inputs_name_the_tensor_and_rule() -> None:
    q = torch.randn(4, 2, 16)
    k = torch.randn(6, 2, 16)
    v = torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match=r"k_new: must have shape \[4, 2, 16\]"):
        causal_attention(q, k, v, torch.randn(3, 2, 16), torch.randn(4, 2, 8), 0.25, 0.1)
    with pytest.raises(ValueError, match=r"v_hist: must have shape \[6, 2, 8\]"):
        candidate_attention(q, k, torch.randn(5, 2, 8), q, torch.randn(4, 2, 8), 0.25, 0.1)
    with pytest.raises(ValueError, match="k_hist: must be torch.float32 on cpu like q"):
        candidate_attention(q, k.double(), v, q, torch.randn(4, 2, 8), 0.25, 0.1)
    with pytest.raises(ValueError, match=r"q: must be 3-d"):
        causal_attention(q.flatten(1), k, v, q, torch.randn(4, 2, 8), 0.25, 0.1)
    with pytest.raises(ValueError, match="v_new: the last \\(feature\\) dim must be contiguous"):
        causal_attention(q, k, v, q, torch.randn(4, 8, 2).transpose(1, 2), 0.25, 0.1)


def test_batched_rank_core_with_zero_padded_histories_equals_each_rank() -> None:
    """Requests of different lengths, padded with zero K/V rows to one length, rank exactly as alone."""
    model = _production(seed=3)
    fused = FusedHSTU(model)
    cfg = model.config
    gen = torch.Generator().manual_seed(5)
    lengths, c, pad = [0, 7, 30], 6, 32
    kv_batch = torch.zeros(cfg.num_layers, len(lengths), pad, cfg.kv_width)
    cands, gaps, want = [], [], []
    with torch.no_grad():
        for b, n in enumerate(lengths):
            emb, ts, actions = _history(model, n, gen)
            kv = model.prefill(emb, ts, actions)
            kv_batch[:, b, :n] = kv
            cand = model.embed_items(torch.randint(0, cfg.num_items, (c,), generator=gen))
            query = (int(ts[-1]) if n else 1_700_000_000) + 120 * (b + 1)
            want.append(model.rank(kv, ts, cand, query))
            cands.append(cand)
            gaps.append(query - int(ts[-1]) if n else 0)
        got = fused.rank_core(kv_batch, torch.tensor(lengths), torch.tensor(gaps), torch.stack(cands))
    torch.testing.assert_close(got, torch.stack(want), atol=ATOL, rtol=1e-5)


def test_batched_ops_equal_per_request_ops() -> None:
    gen = torch.Generator().manual_seed(9)
    q, ks, vs = (
        torch.randn(3, 5, 2, 16, generator=gen),
        torch.randn(3, 5, 2, 16, generator=gen),
        torch.randn(3, 5, 2, 8, generator=gen),
    )
    k, v = torch.randn(3, 11, 2, 16, generator=gen), torch.randn(3, 11, 2, 8, generator=gen)
    for op in (candidate_attention, causal_attention):
        got = op(q, k, v, ks, vs, 0.25, 0.1)
        want = torch.stack([op(q[b], k[b], v[b], ks[b], vs[b], 0.25, 0.1) for b in range(3)])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"k_hist: must have shape \[3, n, 2, 16\]"):
        candidate_attention(q, k[:2], v, ks, vs, 0.25, 0.1)


def test_grad_requiring_inputs_take_the_differentiable_reference() -> None:
    """The kernels have no backward: under autograd the ops must stay differentiable."""
    q = torch.randn(4, 2, 16, requires_grad=True)
    k, v = torch.randn(6, 2, 16), torch.randn(6, 2, 8)
    out = candidate_attention(q, k, v, torch.randn(4, 2, 16), torch.randn(4, 2, 8), 0.25, 0.1)
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
