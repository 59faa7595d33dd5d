"""The public face of the fused HSTU attention: input checks and the backend choice.

`HSTULayer` (and `FusedHSTU` until the layer dispatches itself) call
`causal_attention` for prefill/extend and `candidate_attention` for ranking.
Both run the Triton kernels where they can (`supported`: a CUDA tensor and an
importable `triton`, or Triton's CPU interpreter under TRITON_INTERPRET=1) and
the fp32 reference otherwise, so callers never branch on the device. Only the
production variant's bias-free attention is fused: the research variant's
relative bias is an [m, n] gather per layer and stays in the layer's einsum.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from helmrec.kernels.reference import candidate_attention_reference, causal_attention_reference

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_importable() -> bool:
    """Whether the `triton` package is installed (GPU images; not the CPU CI venv)."""
    return importlib.util.find_spec("triton") is not None


def supported(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on tensors like `t`.

    The kernels are inference-only (no backward), so a tensor that requires
    grad (training) keeps the layer's differentiable einsum path.
    """
    if not triton_importable() or t.dtype not in _DTYPES or t.requires_grad:
        return False
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check(name: str, t: torch.Tensor, rows: int | None, heads: int, dim: int, like: torch.Tensor) -> None:
    lead = tuple(like.shape[:-3])
    if t.dim() != like.dim():
        raise ValueError(f"{name}: must be {like.dim()}-d like q ([batch,] tokens, heads, dim), got shape {list(t.shape)}")
    if tuple(t.shape[:-3]) != lead or (rows is not None and t.shape[-3] != rows) or tuple(t.shape[-2:]) != (heads, dim):
        want = ", ".join(str(x) for x in (*lead, "n" if rows is None else rows, heads, dim))
        raise ValueError(f"{name}: must have shape [{want}], got {list(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name}: must be {like.dtype} on {like.device} like q, got {t.dtype} on {t.device}")
    if t.dtype not in _DTYPES:
        raise ValueError(f"{name}: dtype must be one of {_DTYPES}, got {t.dtype}")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last (feature) dim must be contiguous, got strides {t.stride()}")


def _check_all(q, k_a, v_a, k_b, v_b, names: tuple[str, str, str, str]) -> None:
    if q.dim() not in (3, 4):
        raise ValueError(f"q: must be 3-d [tokens, heads, d_qk] or 4-d [batch, tokens, heads, d_qk], got shape {list(q.shape)}")
    m, h, dqk = q.shape[-3:]
    _check("q", q, m, h, dqk, q)
    _check(names[0], k_a, None, h, dqk, q)
    dv = v_a.shape[-1] if v_a.dim() == q.dim() else -1
    _check(names[1], v_a, k_a.shape[-3], h, dv, q)
    _check(names[2], k_b, m, h, dqk, q)
    _check(names[3], v_b, m, h, dv, q)


def causal_attention(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    qk_scale: float,
    norm_scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """Prefill/extend attention of m new tokens over [n0 cached; m new] keys, causal over the new ones.

    q, k_new [m, H, dqk]; v_new [m, H, dv]; k_ctx [n0, H, dqk]; v_ctx [n0, H, dv]
    (n0 = 0 for a full prefill). Returns [m, H, dv] in q's dtype. All may carry one leading
    batch dim of the same size (requests padded to one length).
    `splits` forces the number of key chunks (tests); None picks one from the SM count.
    """
    _check_all(q, k_ctx, v_ctx, k_new, v_new, ("k_ctx", "v_ctx", "k_new", "v_new"))
    if q.numel() == 0:
        return q.new_zeros(*q.shape[:-1], v_ctx.shape[-1])
    if supported(q):
        from helmrec.kernels.triton_attention import causal_attention_triton

        return causal_attention_triton(q, k_ctx, v_ctx, k_new, v_new, qk_scale, norm_scale, splits)
    return causal_attention_reference(q, k_ctx, v_ctx, k_new, v_new, qk_scale, norm_scale).to(q.dtype)


def candidate_attention(
    q: torch.Tensor,
    k_hist: torch.Tensor,
    v_hist: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    qk_scale: float,
    norm_scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """Target-aware attention of c candidates over n history keys plus each candidate's own key.

    q, k_self [c, H, dqk]; v_self [c, H, dv]; k_hist [n, H, dqk]; v_hist [n, H, dv].
    Returns [c, H, dv] in q's dtype. All may carry one leading batch dim of the same size:
    histories padded with zero K/V rows to one length n rank exactly (SiLU(0) = 0).
    """
    _check_all(q, k_hist, v_hist, k_self, v_self, ("k_hist", "v_hist", "k_self", "v_self"))
    if q.numel() == 0:
        return q.new_zeros(*q.shape[:-1], v_hist.shape[-1])
    if supported(q):
        from helmrec.kernels.triton_attention import candidate_attention_triton

        return candidate_attention_triton(q, k_hist, v_hist, k_self, v_self, qk_scale, norm_scale, splits)
    return candidate_attention_reference(q, k_hist, v_hist, k_self, v_self, qk_scale, norm_scale).to(q.dtype)


def paged_candidate_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    qk_scale: float,
    norm_scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """`candidate_attention` of a batch whose histories are read in place from the KV pool's pages.

    q, k_self [B, c, H, dqk]; v_self [B, c, H, dv]; k_pages [P, tpp, H, dqk] and v_pages
    [P, tpp, H, dv] are the pool's pages of one layer (strided views, no copy); request b's
    history is its first lengths[b] tokens, token j in page block_table[b, j // tpp] at row
    j % tpp. block_table [B, nb] int32 (entries past a request's pages are never read),
    lengths [B] int64 with lengths[b] <= nb * tpp. Returns [B, c, H, dv] in q's dtype.
    Reading the pages in place is what lets a rank step skip copying each request's
    K/V out of the pool and into a padded batch (two copies of ~20 MB a request at
    2,048 tokens of `large`).
    """
    _check_paged(q, k_pages, v_pages, block_table, lengths, k_self, v_self, ("k_self", "v_self"))
    if q.numel() == 0:
        return q.new_zeros(*q.shape[:-1], v_pages.shape[-1])
    if supported(q):
        from helmrec.kernels.triton_attention import paged_candidate_attention_triton

        return paged_candidate_attention_triton(
            q, k_pages, v_pages, block_table, lengths, k_self, v_self, qk_scale, norm_scale, splits
        )
    k_hist, v_hist = (gather_pages(t, block_table, lengths) for t in (k_pages, v_pages))
    return candidate_attention_reference(q, k_hist, v_hist, k_self, v_self, qk_scale, norm_scale).to(q.dtype)


def paged_causal_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    qk_scale: float,
    norm_scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """`causal_attention` of a batch of extends whose cached contexts stay in the KV pool's pages.

    q, k_new [B, m, H, dqk]; v_new [B, m, H, dv]: each request's m new tokens (padded to one m:
    causal, so padding past a request's real tokens never reaches them). Request b's context is
    its first lengths[b] cached tokens, paged as in `paged_candidate_attention`. Returns
    [B, m, H, dv] in q's dtype. A returning user's extend so reads its cached K/V in place
    instead of copying it out of the pool and into a context buffer.
    """
    _check_paged(q, k_pages, v_pages, block_table, lengths, k_new, v_new, ("k_new", "v_new"))
    if q.numel() == 0:
        return q.new_zeros(*q.shape[:-1], v_pages.shape[-1])
    if supported(q):
        from helmrec.kernels.triton_attention import paged_causal_attention_triton

        return paged_causal_attention_triton(
            q, k_pages, v_pages, block_table, lengths, k_new, v_new, qk_scale, norm_scale, splits
        )
    k_ctx, v_ctx = (gather_pages(t, block_table, lengths) for t in (k_pages, v_pages))
    return causal_attention_reference(q, k_ctx, v_ctx, k_new, v_new, qk_scale, norm_scale).to(q.dtype)


def _check_paged(q, k_pages, v_pages, block_table, lengths, k_own, v_own, own_names: tuple[str, str]) -> None:
    """The paged ops' shared input rules; `k_own`/`v_own` are the batch's own keys (new tokens or candidates)."""
    if q.dim() != 4:
        raise ValueError(f"q: must be 4-d [batch, tokens, heads, d_qk], got shape {list(q.shape)}")
    b, m, h, dqk = q.shape
    pages, tpp = k_pages.shape[0], k_pages.shape[1]
    _check(own_names[0], k_own, m, h, dqk, q)
    dv = v_own.shape[-1] if v_own.dim() == 4 else -1
    _check(own_names[1], v_own, m, h, dv, q)
    for name, t, d in (("k_pages", k_pages, dqk), ("v_pages", v_pages, dv)):
        if t.dim() != 4 or tuple(t.shape) != (pages, tpp, h, d):
            want = f"[{pages}, {tpp}, {h}, {d}] (pages, tokens, heads, dim)"
            raise ValueError(f"{name}: must have shape {want}, got {list(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device or t.stride(-1) != 1:
            raise ValueError(f"{name}: must be {q.dtype} on {q.device} like q with a contiguous last dim")
    if k_pages.stride()[:2] != v_pages.stride()[:2]:
        raise ValueError("k_pages, v_pages: must be views of the same page rows (equal page and token strides)")
    table = block_table
    if table.dim() != 2 or table.shape[0] != b or table.dtype != torch.int32 or table.device != q.device:
        raise ValueError(f"block_table: must be int32 [{b}, blocks] on {q.device}, got {table.dtype} {list(table.shape)}")
    if tuple(lengths.shape) != (b,) or lengths.dtype != torch.int64 or lengths.device != q.device:
        raise ValueError(f"lengths: must be int64 [{b}] on {q.device}, got {lengths.dtype} {list(lengths.shape)}")


def gather_pages(pages: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The paged rows [P, tpp, ...] of each request as one padded batch [B, nb * tpp, ...]: rows at
    or past lengths[b] are zero (a zero key adds nothing), whatever the page holds there (even NaN)."""
    b, nb = block_table.shape
    tpp = pages.shape[1]
    rows = pages[block_table.long()].reshape(b, nb * tpp, *pages.shape[2:])
    keep = torch.arange(nb * tpp, device=pages.device).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(keep.view(b, nb * tpp, *([1] * (pages.dim() - 2))), rows, rows.new_zeros(()))
