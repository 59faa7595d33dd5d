"""The rank step as CUDA graphs that read each request's history in place from the KV pool.

`GraphedRank` copies every request's K/V out of the pool and into a padded
static buffer (two copies of ~20 MB a request at 2,048 tokens of `large`, and
one [L, batch, n, W] buffer per bucket: 671 MB at 2,048 tokens and 32
requests). Here the graph's static inputs are only what changes per request:
its block table (int32 page numbers), its length and time gap, and its
candidates' rows. The pool's pages are one allocation whose address never
changes, so a graph captured over them stays valid for the pool's lifetime;
the kernels follow the block table (`paged_candidate_attention`).

The caller keeps the pages where they are until the replay's scores are read
(the pool pins them: `Pool.lookup_many(in_place=True)` / `commit_many`).
Buckets: histories round up to `RankBuckets.history_step` tokens (as blocks
of the pool's pages), candidates to `candidate_step`, batches to a power of
two; the graphs of every batch size of a bucket share one set of buffers.
One `PagedRank` serves one stream at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from helmrec.fastpath.cuda_graphs import capture, require_cuda, to_device
from helmrec.fastpath.fused_model import FusedHSTU
from helmrec.fastpath.graphed_rank import RankBuckets


@dataclass(frozen=True)
class PagedInput:
    """One request whose history stays in the pool: its block table (pages in token order),
    its length in tokens, its candidates' rows [c, D] and the query's gap in seconds since
    the last history event (0 for an empty history)."""

    pages: Sequence[int]
    length: int
    cand_emb: torch.Tensor
    gap_s: int


class _Buffers:
    """The static inputs of every graph of one (blocks, candidates) bucket, sized for `max_batch`."""

    def __init__(self, fused: FusedHSTU, max_batch: int, blocks: int, c: int) -> None:
        w = fused.model.item_emb.weight
        self.block_table = torch.zeros(max_batch, blocks, dtype=torch.int32, device=w.device)
        self.length_gap = torch.zeros(2, max_batch, dtype=torch.int64, device=w.device)
        self.cand_emb = w.new_zeros(max_batch, c, fused.model.config.d_model)


class PagedRank:
    """`FusedHSTU.rank_paged_core` replayed from CUDA graphs captured per bucket over the pool's pages."""

    def __init__(
        self,
        fused: FusedHSTU,
        kv_pages: torch.Tensor,
        buckets: RankBuckets = RankBuckets(),
        capture_lock: contextlib.AbstractContextManager | None = None,
        max_batch: int = 32,
    ) -> None:
        """`kv_pages` is the pool's KV view [P, L, tokens_per_page, W] (see `Pool`)."""
        require_cuda(fused, "PagedRank")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"PagedRank max_batch must be an int >= 1, got {max_batch!r}")
        self.fused = fused
        self.kv_pages = kv_pages
        self.tokens_per_page = kv_pages.shape[2]
        self.buckets = buckets
        self.max_batch = 1 << (max_batch - 1).bit_length()  # batches round up to a power of two
        self._capture_lock = capture_lock
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def bucket(self, n: int, c: int) -> tuple[int, int]:
        """The (blocks, candidates) bucket an n-token, c-candidate request ranks in."""
        _, history, cands = self.buckets.of(1, n, c)
        return -(-history // self.tokens_per_page), cands

    def warm(self, n: int, c: int) -> None:
        """Capture the graphs of every batch size for the bucket of (n, c) now, not on a request."""
        b = 1
        while b <= self.max_batch:
            self._graph(b, *self.bucket(n, c))
            b *= 2

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the static inputs of every bucket captured so far (graph workspaces excluded)."""
        tensors = [t for b in self._buffers.values() for t in (b.block_table, b.length_gap, b.cand_emb)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _graph(self, batch: int, blocks: int, c: int) -> tuple[_Buffers, tuple[torch.cuda.CUDAGraph, torch.Tensor]]:
        buffers = self._buffers.get((blocks, c))
        if buffers is None:
            buffers = self._buffers[(blocks, c)] = _Buffers(self.fused, self.max_batch, blocks, c)
        graph = self._graphs.get((batch, blocks, c))
        if graph is None:
            table, length_gap, cand_emb = buffers.block_table[:batch], buffers.length_gap[:, :batch], buffers.cand_emb[:batch]
            graph = self._graphs[(batch, blocks, c)] = capture(
                lambda: self.fused.rank_paged_core(self.kv_pages, table, length_gap[0], length_gap[1], cand_emb),
                self.kv_pages.device,
                self._capture_lock,
            )
        return buffers, graph

    def rank_many(self, requests: Sequence[PagedInput]) -> list[torch.Tensor]:
        """Scores [c_i, T] float32 on the host of each request, all from one graph replay (one
        H2D copy of the block tables, lengths and gaps; one D2H of the scores)."""
        cfg = self.fused.model.config
        if not requests:
            raise ValueError("requests: must hold at least one PagedInput")
        if len(requests) > self.max_batch:
            raise ValueError(f"requests: {len(requests)} exceed this PagedRank's max_batch {self.max_batch}")
        lengths = [r.length for r in requests]
        counts = [r.cand_emb.shape[0] for r in requests]
        if max(lengths) > cfg.max_seq_len or max(counts) > cfg.max_candidates:
            raise ValueError(
                f"requests: {max(lengths)} tokens / {max(counts)} candidates exceed "
                f"max_seq_len {cfg.max_seq_len} / max_candidates {cfg.max_candidates}"
            )
        batch = len(requests)
        padded_batch = self.buckets.of(batch, 1, 1)[0]
        buffers, (graph, scores) = self._graph(padded_batch, *self.bucket(max(lengths), max(counts)))
        blocks = buffers.block_table.shape[1]
        table = np.zeros((batch, blocks), dtype=np.int32)
        for b, r in enumerate(requests):
            table[b, : len(r.pages)] = r.pages
        length_gap = np.zeros((2, padded_batch), dtype=np.int64)  # padding slots: no history to read
        length_gap[0, :batch] = lengths
        length_gap[1, :batch] = [r.gap_s for r in requests]
        device = buffers.block_table.device
        with torch.inference_mode():
            to_device(table, device, out=buffers.block_table[:batch])
            to_device(length_gap, device, out=buffers.length_gap[:, :padded_batch])
            for b, r in enumerate(requests):
                buffers.cand_emb[b, : counts[b]].copy_(r.cand_emb)
            graph.replay()
            host = scores[:batch].float().cpu()
        return [host[b, : counts[b]] for b in range(batch)]
