"""HSTU's cached inference path (extend/prefill and rank) with the fused attention.

`HSTULayer` does not dispatch to the kernels yet (its owner wires that; see
docs/gpu.md), so the GPU benchmark runs the same network through this class:
the layer's own projections, gating and head, with only the attention core
replaced by `causal_attention` / `candidate_attention`. A CPU test pins it to
`HSTU.extend` / `HSTU.rank`, so it cannot drift from the model unnoticed.
Production variant only: the research variant's relative bias is not fused.
"""

from __future__ import annotations

import torch

from helmrec.hstu.features import previous_event_gaps
from helmrec.hstu.layer import HSTULayer
from helmrec.hstu.model import HSTU
from helmrec.kernels.attention import candidate_attention, causal_attention, paged_candidate_attention, paged_causal_attention


def layer_extend(
    layer: HSTULayer, x: torch.Tensor, k_ctx: torch.Tensor, v_ctx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer(x, k_ctx, v_ctx, causal keep, None)` for one request: x [m, D] -> (y [m, D], k, v)."""
    u, q, k, v = layer.project(x)
    a = causal_attention(q, k_ctx, v_ctx, k, v, layer.qk_scale, layer.norm_scale)
    return layer.output(x, u, a.flatten(-2)), k, v


def layer_extend_paged(
    layer: HSTULayer,
    x: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    cached: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer_extend` of a batch x [B, m, D] whose cached contexts are read in place from the pool's pages."""
    u, q, k, v = layer.project(x)
    a = paged_causal_attention(q, k_pages, v_pages, block_table, cached, k, v, layer.qk_scale, layer.norm_scale)
    return layer.output(x, u, a.flatten(-2)), k, v


def layer_rank(layer: HSTULayer, x: torch.Tensor, k_hist: torch.Tensor, v_hist: torch.Tensor) -> torch.Tensor:
    """`layer.forward_candidates(x, k_hist, v_hist, None, None)` for one request: x [c, D] -> y [c, D]."""
    u, q, k, v = layer.project(x)
    a = candidate_attention(q, k_hist, v_hist, k, v, layer.qk_scale, layer.norm_scale)
    return layer.output(x, u, a.flatten(-2))


def layer_rank_paged(
    layer: HSTULayer,
    x: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    length: torch.Tensor,
) -> torch.Tensor:
    """`layer_rank` of a batch x [B, c, D] whose histories are read in place from the pool's pages."""
    u, q, k, v = layer.project(x)
    a = paged_candidate_attention(q, k_pages, v_pages, block_table, length, k, v, layer.qk_scale, layer.norm_scale)
    return layer.output(x, u, a.flatten(-2))


class FusedHSTU:
    """`HSTU.prefill` / `extend_suffix` / `rank` (unchecked bodies) with fused attention."""

    def __init__(self, model: HSTU) -> None:
        if model.config.variant != "production":
            raise ValueError(
                f"FusedHSTU: model.config.variant must be 'production' (no attention bias), got {model.config.variant!r}"
            )
        self.model = model

    def prefill(self, hist_emb: torch.Tensor, hist_ts: torch.Tensor, hist_actions: torch.Tensor) -> torch.Tensor:
        """kv [L, n, W] of a whole history."""
        return self.extend_suffix(self.model.empty_kv(), hist_emb, hist_ts, hist_actions)

    def extend_suffix(
        self, kv: torch.Tensor, new_emb: torch.Tensor, hist_ts: torch.Tensor, new_actions: torch.Tensor
    ) -> torch.Tensor:
        """kv [L, n1, W] of n1 new tokens after the cached kv [L, n0, W]; hist_ts holds all n0 + n1 times."""
        n0 = kv.shape[1]
        start = torch.full((), n0, dtype=torch.int64, device=new_emb.device)
        return self.extend_core(kv, start, previous_event_gaps(hist_ts, n0), new_emb, new_actions)

    def extend_core(
        self, kv: torch.Tensor, start: torch.Tensor, gaps: torch.Tensor, new_emb: torch.Tensor, new_actions: torch.Tensor
    ) -> torch.Tensor:
        """`extend_suffix` with the new tokens' first position (0-d int64) and their gaps to the
        previous event ([n1] int64) as tensors: nothing here reads a value on the host, so the
        step can be captured in a CUDA graph. `kv` may carry zero rows past `start` (a zero key
        adds SiLU(0) = 0), and new tokens past the real ones only change rows after them (causal);
        their positions are clamped into the position table."""
        return self._extend_layers(
            start, gaps, new_emb, new_actions, lambda i, layer, x: layer_extend(layer, x, *self._unpack(kv[i]))
        )

    def extend_paged_core(
        self,
        kv_pages: torch.Tensor,
        block_table: torch.Tensor,
        start: torch.Tensor,
        gaps: torch.Tensor,
        new_emb: torch.Tensor,
        new_actions: torch.Tensor,
    ) -> torch.Tensor:
        """`extend_core` of a batch of returning users whose cached K/V stays in the pool's pages:
        kv_pages [P, L, tpp, W], block_table [B, nb] int32, start [B] int64 (each user's cached
        length, where its new tokens begin), gaps and new_actions [B, m], new_emb [B, m, D] ->
        the new tokens' K/V [L, B, m, W]. Rows past a user's real new tokens are padding
        (causal: they never reach the real ones). Nothing reads a value on the host (`PagedExtend`)."""

        def step(i: int, layer: HSTULayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return layer_extend_paged(layer, x, *self._unpack(kv_pages[:, i]), block_table, start)

        return self._extend_layers(start.unsqueeze(-1), gaps, new_emb, new_actions, step)

    def _extend_layers(self, start: torch.Tensor, gaps: torch.Tensor, new_emb: torch.Tensor, new_actions: torch.Tensor, step):
        """The history tower over new tokens whose first position is `start` (broadcast over their
        leading dims): features, `step(i, layer, x) -> (x, k, v)` through each layer, and the new
        K/V of every layer stacked [L, ..., m, W]."""
        model = self.model
        steps = torch.arange(new_emb.shape[-2], device=new_emb.device)
        positions = (start + steps).clamp(max=model.config.max_seq_len - 1)
        x = model._history_features(new_emb, new_actions, positions, gaps)
        new_kv = []
        for i, layer in enumerate(model.layers):
            x, k, v = step(i, layer, x)
            new_kv.append(torch.cat([k.flatten(-2), v.flatten(-2)], dim=-1))
        return torch.stack(new_kv)

    def rank(self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Scores [c, T] float32 of c candidates after the cached history; query time as an int64 tensor."""
        n = kv.shape[1]
        query = query.reshape(())
        gap = query - hist_ts[-1] if n > 0 else torch.zeros_like(query)
        return self.rank_core(kv, torch.full((), n, dtype=torch.int64, device=kv.device), gap, cand_emb)

    def rank_core(self, kv: torch.Tensor, length: torch.Tensor, gap: torch.Tensor, cand_emb: torch.Tensor) -> torch.Tensor:
        """`rank` with the history length and the query's time gap as int64 tensors.

        One request: kv [L, n, W], 0-d length and gap, cand_emb [c, D] -> [c, T].
        A batch of B requests: kv [L, B, n, W], length and gap [B], cand_emb [B, c, D] -> [B, c, T].
        Nothing here reads a tensor's value on the host, so the step can be
        captured in a CUDA graph (`GraphedRank`). `kv` may carry zero rows past
        `length`: a zero key scores SiLU(0) = 0, so padding adds nothing.
        """
        return self._rank_layers(length, gap, cand_emb, lambda i, layer, x: layer_rank(layer, x, *self._unpack(kv[i])))

    def rank_paged_core(
        self, kv_pages: torch.Tensor, block_table: torch.Tensor, length: torch.Tensor, gap: torch.Tensor, cand_emb: torch.Tensor
    ) -> torch.Tensor:
        """`rank_core` of a batch whose histories stay in the KV pool's pages: kv_pages [P, L, tpp, W]
        (the pool's view), block_table [B, nb] int32, length and gap [B] int64, cand_emb [B, c, D] ->
        [B, c, T]. Nothing is copied out of the pool, and nothing here reads a value on the host,
        so one graph per (blocks, candidates, batch) bucket serves every history in it (`PagedRank`)."""

        def step(i: int, layer: HSTULayer, x: torch.Tensor) -> torch.Tensor:
            return layer_rank_paged(layer, x, *self._unpack(kv_pages[:, i]), block_table, length)

        return self._rank_layers(length, gap, cand_emb, step)

    def _rank_layers(self, length: torch.Tensor, gap: torch.Tensor, cand_emb: torch.Tensor, step) -> torch.Tensor:
        """The candidate tower: input features, `step(i, layer, x)` through each layer, the head."""
        model = self.model
        lead = cand_emb.shape[:-1]
        x = model._candidate_input(cand_emb, length.unsqueeze(-1).expand(lead), gap.unsqueeze(-1).expand(lead))
        for i, layer in enumerate(model.layers):
            x = step(i, layer, x)
        return model._head(x, cand_emb)

    def _unpack(self, kv_layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., n, W] -> views K [..., n, H, dqk], V [..., n, H, dv] (no copy)."""
        cfg = self.model.config
        split = cfg.num_heads * cfg.d_qk
        return (
            kv_layer[..., :split].unflatten(-1, (cfg.num_heads, cfg.d_qk)),
            kv_layer[..., split:].unflatten(-1, (cfg.num_heads, cfg.d_v)),
        )
