"""The rank step as CUDA graphs, one per bucket of (batch, history length, candidates).

At a KV hit the rank step is ~10 small kernels per layer; launching them from
Python costs more than running them (H100, `large` preset: ~2-5 ms eager vs
~0.4 ms replayed). A CUDA graph replays the whole step with one launch.
Graphs need fixed shapes and addresses, so requests are copied into the
static buffers of their bucket: history rows past a request's length are zero
(a zero key adds SiLU(0) = 0, see `FusedHSTU.rank_core`), and candidates or
batch slots past the request's are computed and dropped (candidates never see
each other). Several requests ranked at once share one replay, which is how
concurrency turns into throughput. The copy of the KV into the bucket is the
price of fixed addresses and is part of every measured latency.

One `GraphedRank` serves one stream at a time: its static buffers are shared
by every replay, so concurrent callers each need their own.

Memory is bounded per (history, candidates) bucket: the graphs of every batch
size of one bucket are views of one buffer sized for `max_batch` requests
(`large` at 2048 tokens: 5 x 32 x 2048 x 1024 bf16 = 671 MB), so more batch
sizes cost only their graphs' own workspaces. `warm` captures the buckets that
traffic will need before it arrives; anything else is captured lazily, under
`capture_lock` (see `cuda_graphs.capture`), on the first request that needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from helmrec.fastpath.cuda_graphs import capture, require_cuda, round_up
from helmrec.fastpath.fused_model import FusedHSTU


@dataclass(frozen=True)
class RankBuckets:
    """Histories round up to a multiple of `history_step` tokens, candidates to one of
    `candidate_step`, batches to a power of two."""

    history_step: int = 512
    candidate_step: int = 64

    def __post_init__(self) -> None:
        for name in ("history_step", "candidate_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RankBuckets.{name} must be an int >= 1, got {value!r}")

    def of(self, batch: int, n: int, c: int) -> tuple[int, int, int]:
        b = 1 << max(0, (batch - 1).bit_length())
        return b, max(self.history_step, round_up(n, self.history_step)), round_up(c, self.candidate_step)


@dataclass(frozen=True)
class RankInput:
    """One request at a KV hit: its cached kv [L, n, W], candidate rows [c, D] and the
    query's gap in seconds since the last history event (0 for an empty history)."""

    kv: torch.Tensor
    cand_emb: torch.Tensor
    gap_s: int


class _Buffers:
    """The static inputs of every graph of one (history, candidates) bucket, sized for `max_batch`."""

    def __init__(self, fused: FusedHSTU, max_batch: int, n: int, c: int) -> None:
        model = fused.model
        w = model.item_emb.weight
        cfg = model.config
        self.kv = w.new_zeros(cfg.num_layers, max_batch, n, cfg.kv_width)
        self.cand_emb = w.new_zeros(max_batch, c, cfg.d_model)
        self.length_gap = torch.zeros(2, max_batch, dtype=torch.int64, device=w.device)
        self.filled = 0  # history rows that may be non-zero from an earlier request


class _Graph:
    """One captured rank step of `batch` requests over the first `batch` slots of its bucket's buffers."""

    def __init__(self, fused: FusedHSTU, buffers: _Buffers, batch: int, lock: contextlib.AbstractContextManager | None) -> None:
        kv, cand_emb, length_gap = buffers.kv[:, :batch], buffers.cand_emb[:batch], buffers.length_gap[:, :batch]
        self.graph, self.scores = capture(
            lambda: fused.rank_core(kv, length_gap[0], length_gap[1], cand_emb), fused.model.item_emb.weight.device, lock
        )


class GraphedRank:
    """`FusedHSTU.rank` replayed from CUDA graphs captured lazily per bucket."""

    def __init__(
        self,
        fused: FusedHSTU,
        buckets: RankBuckets = RankBuckets(),
        capture_lock: contextlib.AbstractContextManager | None = None,
        max_batch: int = 32,
    ) -> None:
        require_cuda(fused, "GraphedRank")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"GraphedRank max_batch must be an int >= 1, got {max_batch!r}")
        self.fused = fused
        self.buckets = buckets
        self.max_batch = 1 << (max_batch - 1).bit_length()  # batches round up to a power of two
        self._capture_lock = capture_lock
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._graphs: dict[tuple[int, int, int], _Graph] = {}

    def bucket(self, n: int, c: int) -> tuple[int, int]:
        """The (history, candidates) bucket an n-token, c-candidate request ranks in."""
        return self.buckets.of(1, n, c)[1:]

    def warm(self, n: int, c: int) -> None:
        """Capture the graphs of every batch size for the bucket of (n, c) now, not on a request."""
        b = 1
        while b <= self.max_batch:
            self._graph(b, *self.bucket(n, c))
            b *= 2

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the static inputs of every bucket captured so far (graph workspaces excluded)."""
        return sum(t.numel() * t.element_size() for b in self._buffers.values() for t in (b.kv, b.cand_emb, b.length_gap))

    def _graph(self, batch: int, n: int, c: int) -> tuple[_Buffers, _Graph]:
        buffers = self._buffers.get((n, c))
        if buffers is None:
            buffers = self._buffers[(n, c)] = _Buffers(self.fused, self.max_batch, n, c)
        graph = self._graphs.get((batch, n, c))
        if graph is None:
            graph = self._graphs[(batch, n, c)] = _Graph(self.fused, buffers, batch, self._capture_lock)
        return buffers, graph

    def rank(self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query_ts: int) -> torch.Tensor:
        """Same result as `FusedHSTU.rank` (scores [c, T] float32); `hist_ts` best on the host."""
        gap = int(query_ts) - int(hist_ts[-1]) if kv.shape[1] else 0
        return self.rank_many([RankInput(kv, cand_emb, gap)])[0]

    def rank_many(self, requests: Sequence[RankInput], to_host: bool = False) -> list[torch.Tensor]:
        """Scores [c_i, T] float32 of each request, all from one graph replay: on the host with
        `to_host`, else on the device."""
        cfg = self.fused.model.config
        if not requests:
            raise ValueError("requests: must hold at least one RankInput")
        lengths = [r.kv.shape[1] for r in requests]
        counts = [r.cand_emb.shape[0] for r in requests]
        if max(lengths) > cfg.max_seq_len or max(counts) > cfg.max_candidates:
            raise ValueError(
                f"requests: {max(lengths)} tokens / {max(counts)} candidates exceed "
                f"max_seq_len {cfg.max_seq_len} / max_candidates {cfg.max_candidates}"
            )
        if len(requests) > self.max_batch:
            raise ValueError(f"requests: {len(requests)} exceed this GraphedRank's max_batch {self.max_batch}")
        buffers, graph = self._graph(*self.buckets.of(len(requests), max(lengths), max(counts)))
        batch, n = len(requests), max(lengths)
        with torch.inference_mode():
            for b, r in enumerate(requests):  # straight into the slot: no stacked temporary to copy twice
                buffers.kv[:, b, : lengths[b]].copy_(r.kv)
                if lengths[b] < n:
                    buffers.kv[:, b, lengths[b] : n].zero_()
                buffers.cand_emb[b, : counts[b]].copy_(r.cand_emb)
            if buffers.filled > n:
                buffers.kv[:, :, n : buffers.filled].zero_()
            buffers.filled = n
            host = torch.tensor([lengths, [r.gap_s for r in requests]], dtype=torch.int64)
            buffers.length_gap[:, :batch].copy_(host)
            graph.graph.replay()
            # One copy out of the graph's output for the whole batch: on the host when asked
            # (one D2H and one sync instead of one per request), else on the device.
            scores = graph.scores[:batch].float().cpu() if to_host else graph.scores[:batch].clone()
        return [scores[b, : counts[b]] for b in range(batch)]
