"""One HSTU block: pointwise projection, pointwise (SiLU) attention, gated output.

The block never sees ids, positions or timestamps: it takes the attention
bias (research variant) and the keep-mask from the model, and the K/V of
tokens already processed ("context") from the cache. That split lets the same
block run the uncached forward, an incremental prefill and the candidate pass.
Leading batch dimensions are allowed everywhere (training batches users).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from helmrec.hstu.config import HSTUConfig
from helmrec.kernels.attention import candidate_attention, causal_attention, supported

# The fused kernels pay off in half precision; in fp32 (no tensor-core path for their dot
# products) they measured slower than cuBLAS einsums on the H100 (rank at 16k: 40 vs 16.6 ms).
_FUSED_DTYPES = (torch.bfloat16, torch.float16)

_LN_EPS = 1e-6


class HSTULayer(nn.Module):
    """research: u,v,q,k = SiLU(LN(x) W);  A = SiLU(QK^T + rab) / N;  y = W_o(u * LN(A v)) + x
    production: u,v,q,k = LN(x) W + b, SiLU(u);  A = SiLU(QK^T / sqrt(d_qk)) / N;
                y = x + W_o [u, a, u * LN(a)]

    N is the constant `max_seq_len`, not the request's length: with a length-
    dependent N every cached prefix would be stale as soon as the history grew.
    (The research code divides by the padded length, which is also constant.)
    """

    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, dqk, dv, d = cfg.num_heads, cfg.d_qk, cfg.d_v, cfg.d_model
        self.research = cfg.variant == "research"
        self.split = (h * dv, h * dv, h * dqk, h * dqk)  # u, v, q, k
        self.norm_scale = 1.0 / cfg.max_seq_len
        self.dropout = nn.Dropout(cfg.dropout)
        if self.research:
            self.uvqk = nn.Parameter(torch.empty(d, sum(self.split)).normal_(0.0, 0.02))
            self.o = nn.Linear(h * dv, d)
            # Relative attention bias tables (one scalar per pair, shared by heads):
            # positions 0..max_seq_len back, log time buckets 0..num_time_buckets.
            self.pos_bias = nn.Parameter(torch.empty(cfg.max_seq_len + 1).normal_(0.0, 0.02))
            self.time_bias = nn.Parameter(torch.empty(cfg.num_time_buckets + 1).normal_(0.0, 0.02))
            self.qk_scale = 1.0
        else:
            self.in_norm = nn.LayerNorm(d, eps=_LN_EPS)
            self.uvqk_proj = nn.Linear(d, sum(self.split))
            nn.init.normal_(self.uvqk_proj.weight, 0.0, 0.02)
            self.attn_norm = nn.LayerNorm(h * dv, eps=_LN_EPS)
            self.o = nn.Linear(3 * h * dv, d)
            self.qk_scale = 1.0 / math.sqrt(dqk)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., m, D] -> u [..., m, H*dv], q [..., m, H, dqk], k [..., m, H, dqk], v [..., m, H, dv]."""
        h, dqk, dv = self.cfg.num_heads, self.cfg.d_qk, self.cfg.d_v
        if self.research:
            uvqk = F.silu(F.layer_norm(x, (x.shape[-1],), eps=_LN_EPS) @ self.uvqk)
            u, v, q, k = uvqk.split(self.split, dim=-1)
        else:
            u, v, q, k = self.uvqk_proj(self.in_norm(x)).split(self.split, dim=-1)
            u = F.silu(u)
        lead = x.shape[:-1]
        return u, q.reshape(*lead, h, dqk), k.reshape(*lead, h, dqk), v.reshape(*lead, h, dv)

    def pair_bias(self, rel_pos: torch.Tensor, time_bucket: torch.Tensor) -> torch.Tensor:
        """Research rab for given index tensors (any shape); production has none."""
        return self.pos_bias[rel_pos] + self.time_bias[time_bucket]

    def attention_weights(self, qk: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """SiLU(qk * scale + bias) / N; `bias` broadcasts over the head dim of `qk`."""
        s = qk * self.qk_scale if self.qk_scale != 1.0 else qk
        if bias is not None:
            s = s + bias
        return F.silu(s) * self.norm_scale

    def output(self, x: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Gated output and residual; a [..., m, H*dv]."""
        if self.research:
            return self.o(self.dropout(u * F.layer_norm(a, (a.shape[-1],), eps=_LN_EPS))) + x
        return x + self.o(self.dropout(torch.cat([u, a, u * self.attn_norm(a)], dim=-1)))

    def forward(
        self,
        x: torch.Tensor,
        k_ctx: torch.Tensor,
        v_ctx: torch.Tensor,
        keep: torch.Tensor,
        bias: torch.Tensor | None,
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Process m new tokens that attend to n context tokens and to each other.

        x [..., m, D]; k_ctx [..., n, H, dqk]; v_ctx [..., n, H, dv];
        keep [..., m, n+m] bool (which keys each new token sees);
        bias [..., m, n+m] or None. Returns (y [..., m, D], k [..., m, H, dqk], v [..., m, H, dv]).
        `causal=True` promises that `keep` is the plain causal mask over [context; new], which
        lets a bias-free layer on a GPU run the fused kernel instead of materialising [H, m, n+m].
        """
        u, q, k, v = self.project(x)
        if causal and bias is None and q.dtype in _FUSED_DTYPES and supported(q):
            a = causal_attention(q, k_ctx, v_ctx, k, v, self.qk_scale, self.norm_scale)
            return self.output(x, u, a.flatten(-2)), k, v
        keys = torch.cat([k_ctx, k], dim=-3)
        values = torch.cat([v_ctx, v], dim=-3)
        qk = torch.einsum("...mhd,...nhd->...hmn", q, keys)
        w = self.attention_weights(qk, None if bias is None else bias.unsqueeze(-3))
        w = w * keep.unsqueeze(-3).to(w.dtype)
        a = torch.einsum("...hmn,...nhd->...mhd", w, values).flatten(-2)
        return self.output(x, u, a), k, v

    def forward_candidates(
        self,
        x: torch.Tensor,
        k_hist: torch.Tensor,
        v_hist: torch.Tensor,
        bias_hist: torch.Tensor | None,
        bias_self: torch.Tensor | None,
        keep_hist: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Target-aware pass: each of c candidates sees the history and itself, no other candidate.

        Computing the history part [..., H, c, n] and the diagonal [..., c, H]
        separately avoids the c x c block of a masked attention, which for 2048
        candidates would be most of the work and all of it masked out.
        x [..., c, D]; k_hist [..., n, H, dqk]; v_hist [..., n, H, dv];
        bias_hist broadcastable to [..., c, n]; bias_self broadcastable to [..., c];
        keep_hist [..., c, n] bool limits candidate k to a history prefix (training
        ranks many prefixes at once); None means the whole history.
        """
        u, q, k, v = self.project(x)
        if bias_hist is None and bias_self is None and keep_hist is None and q.dtype in _FUSED_DTYPES and supported(q):
            a = candidate_attention(q, k_hist, v_hist, k, v, self.qk_scale, self.norm_scale)
            return self.output(x, u, a.flatten(-2))
        qk = torch.einsum("...chd,...nhd->...hcn", q, k_hist)
        w_hist = self.attention_weights(qk, None if bias_hist is None else bias_hist.unsqueeze(-3))
        if keep_hist is not None:
            w_hist = w_hist * keep_hist.unsqueeze(-3).to(w_hist.dtype)
        w_self = self.attention_weights((q * k).sum(-1), None if bias_self is None else bias_self.unsqueeze(-1))
        a = torch.einsum("...hcn,...nhd->...chd", w_hist, v_hist) + w_self.unsqueeze(-1) * v
        return self.output(x, u, a.flatten(-2))
