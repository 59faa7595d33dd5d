"""Pure-torch, fp32 definitions of the two HSTU attention ops the kernels fuse.

They restate `HSTULayer`'s attention for the only shapes serving runs (one
request, no batch dim, production variant: no attention bias) as separate
functions, so that (1) the Triton kernels have an fp32 ground truth to be
compared with on fresh random inputs, and (2) a CPU test can prove that
putting these ops into the layer leaves its output unchanged.

Shapes: q [m, H, dqk]; k [n, H, dqk]; v [n, H, dv]; result [m, H, dv] float32,
each with an optional leading batch dim (several requests of one padded size).
`qk_scale` is 1/sqrt(dqk) (production); `norm_scale` is 1/max_seq_len, a
constant so a cached prefix's contribution never changes as the history grows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weights(q: torch.Tensor, k: torch.Tensor, qk_scale: float, norm_scale: float) -> torch.Tensor:
    """SiLU(q k^T * scale) / N in float32, [..., H, m, n]."""
    qk = torch.einsum("...mhd,...nhd->...hmn", q.float(), k.float())
    return F.silu(qk * qk_scale) * norm_scale


def causal_attention_reference(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    qk_scale: float,
    norm_scale: float,
) -> torch.Tensor:
    """Prefill/extend: m new tokens (positions n0..n0+m-1) over [n0 cached; m new] keys, causal.

    New token i sees every cached key and the new keys 0..i.
    """
    n0, m = k_ctx.shape[-3], q.shape[-3]
    keys = torch.cat([k_ctx, k_new], dim=-3).float()
    values = torch.cat([v_ctx, v_new], dim=-3).float()
    pos_q = torch.arange(n0, n0 + m, device=q.device)
    keep = torch.arange(n0 + m, device=q.device).unsqueeze(0) <= pos_q.unsqueeze(1)
    w = _weights(q, keys, qk_scale, norm_scale) * keep
    return torch.einsum("...hmn,...nhd->...mhd", w, values)


def candidate_attention_reference(
    q: torch.Tensor,
    k_hist: torch.Tensor,
    v_hist: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    qk_scale: float,
    norm_scale: float,
) -> torch.Tensor:
    """Target-aware ranking: each of c candidates sees all n history keys and itself, no other candidate."""
    w_hist = _weights(q, k_hist, qk_scale, norm_scale)
    w_self = F.silu((q.float() * k_self.float()).sum(-1) * qk_scale) * norm_scale  # [..., c, H]
    return torch.einsum("...hcn,...nhd->...chd", w_hist, v_hist.float()) + w_self.unsqueeze(-1) * v_self.float()
