"""The rank step as CUDA graphs, one per bucket of (history length, candidates).

At a KV hit the rank step is ~10 small kernels per layer; launching them from
Python costs more than running them for short histories. A CUDA graph replays
the whole step with one launch. Graphs need fixed shapes and addresses, so a
request is copied into the static buffers of its bucket: history rows past the
request's length stay zero (a zero key adds SiLU(0) = 0, see
`FusedHSTU.rank_core`) and candidates past its count are computed and dropped
(candidates never see each other). The copy of the KV into the bucket is the
price of fixed addresses and is part of every measured latency.

One `GraphedRank` serves one stream at a time: its static buffers are shared
by every replay, so concurrent callers each need their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from python_backend.kernels.fused_model import FusedHSTU


@dataclass(frozen=True)
class RankBuckets:
    """Histories round up to a multiple of `history_step` tokens, candidates to one of `candidate_step`."""

    history_step: int = 512
    candidate_step: int = 64

    def __post_init__(self) -> None:
        for name in ("history_step", "candidate_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RankBuckets.{name} must be an int >= 1, got {value!r}")

    def of(self, n: int, c: int) -> tuple[int, int]:
        return max(1, -(-n // self.history_step)) * self.history_step, -(-c // self.candidate_step) * self.candidate_step


class _Graph:
    """One captured rank step and its static inputs/outputs."""

    def __init__(self, fused: FusedHSTU, n: int, c: int) -> None:
        model = fused.model
        w = model.item_emb.weight
        cfg = model.config
        self.kv = w.new_zeros(cfg.num_layers, n, cfg.kv_width)
        self.cand_emb = w.new_zeros(c, cfg.d_model)
        self.length = torch.zeros((), dtype=torch.int64, device=w.device)
        self.gap = torch.zeros((), dtype=torch.int64, device=w.device)
        self.filled = 0  # history rows that may be non-zero from an earlier request
        side = torch.cuda.Stream(w.device)
        side.wait_stream(torch.cuda.current_stream(w.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # compile the Triton kernels and settle the allocator before capture
                fused.rank_core(self.kv, self.length, self.gap, self.cand_emb)
        torch.cuda.current_stream(w.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.scores = fused.rank_core(self.kv, self.length, self.gap, self.cand_emb)


class GraphedRank:
    """`FusedHSTU.rank` replayed from CUDA graphs captured lazily per bucket."""

    def __init__(self, fused: FusedHSTU, buckets: RankBuckets = RankBuckets()) -> None:
        if fused.model.item_emb.weight.device.type != "cuda":
            raise ValueError(f"GraphedRank needs the model on a CUDA device, got {fused.model.item_emb.weight.device}")
        self.fused = fused
        self.buckets = buckets
        self._graphs: dict[tuple[int, int], _Graph] = {}

    def rank(self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Same inputs and result as `FusedHSTU.rank` (scores [c, T] float32)."""
        n, c = kv.shape[1], cand_emb.shape[0]
        cfg = self.fused.model.config
        if n > cfg.max_seq_len or c > cfg.max_candidates:
            raise ValueError(f"kv/cand_emb: {n} tokens, {c} candidates exceed max_seq_len {cfg.max_seq_len} / max_candidates {cfg.max_candidates}")
        key = self.buckets.of(n, c)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _Graph(self.fused, *key)
        with torch.inference_mode():
            graph.kv[:, :n].copy_(kv)
            if graph.filled > n:
                graph.kv[:, n : graph.filled].zero_()
            graph.filled = n
            graph.cand_emb[:c].copy_(cand_emb)
            graph.length.fill_(n)
            query = query.reshape(())
            graph.gap.copy_(query - hist_ts[-1] if n > 0 else torch.zeros_like(query))
            graph.graph.replay()
            return graph.scores[:c].clone()
