"""Returning users' incremental prefills as CUDA graphs, batched, reading the cached K/V in place.

The common request of a live recommender is a user coming back with a few new
events: the pool holds the K/V of the old history and only the new tokens are
computed. `GraphedExtend` does that one user at a time and copies the cached
K/V out of the pool and into a context buffer first (~20 MB a user at 2,048
tokens of `large`). Here one replay extends a whole batch of returning users
and the kernels follow each user's block table into the pool's pages
(`FusedHSTU.extend_paged_core`), so nothing is copied but the new tokens'
embeddings in and their K/V out.

Buckets: the cached length rounds up to `context_step` tokens (as blocks of
the pool's pages), the new tokens to `new_step` (at most `max_new`: a longer
absence takes the eager path), the batch to a power of two; graphs of one
(context, new) bucket share one set of buffers. The caller keeps the pages in
place until the replay ran (the pool pins them). One `PagedExtend` serves one
stream at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from helmrec.fastpath.cuda_graphs import capture, require_cuda, round_up, to_device
from helmrec.fastpath.fused_model import FusedHSTU


@dataclass(frozen=True)
class ExtendInput:
    """One returning user: the pages of its cached prefix (token order), the prefix's length,
    and its new tokens: embeddings [m, D] on the device, actions and gaps to the previous
    event [m] as host int64 arrays."""

    pages: Sequence[int]
    cached: int
    new_emb: torch.Tensor
    new_actions: np.ndarray
    gaps: np.ndarray


class _Buffers:
    """The static inputs of every graph of one (blocks, new tokens) bucket, sized for `max_batch`."""

    def __init__(self, fused: FusedHSTU, max_batch: int, blocks: int, m: int) -> None:
        w = fused.model.item_emb.weight
        self.block_table = torch.zeros(max_batch, blocks, dtype=torch.int32, device=w.device)
        self.start = torch.zeros(max_batch, dtype=torch.int64, device=w.device)
        self.actions_gaps = torch.zeros(2, max_batch, m, dtype=torch.int64, device=w.device)
        self.emb = w.new_zeros(max_batch, m, fused.model.config.d_model)


class PagedExtend:
    """`FusedHSTU.extend_paged_core` replayed from CUDA graphs per (context, new tokens, batch) bucket."""

    def __init__(
        self,
        fused: FusedHSTU,
        kv_pages: torch.Tensor,
        context_step: int = 512,
        new_step: int = 16,
        max_new: int = 64,
        capture_lock: contextlib.AbstractContextManager | None = None,
        max_batch: int = 32,
    ) -> None:
        """`kv_pages` is the pool's KV view [P, L, tokens_per_page, W] (see `Pool`)."""
        require_cuda(fused, "PagedExtend")
        sizes = {"context_step": context_step, "new_step": new_step, "max_new": max_new, "max_batch": max_batch}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PagedExtend {name} must be an int >= 1, got {value!r}")
        self.fused = fused
        self.kv_pages = kv_pages
        self.tokens_per_page = kv_pages.shape[2]
        self.context_step = context_step
        self.new_step = new_step
        self.max_new = max_new
        self.max_batch = 1 << (max_batch - 1).bit_length()
        self._capture_lock = capture_lock
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def applies(self, cached: int, new: int) -> bool:
        """Whether (cached, new) tokens run from a graph: a cached prefix and 1..max_new new tokens."""
        return 0 < cached and 0 < new <= self.max_new

    def bucket(self, cached: int, new: int) -> tuple[int, int]:
        """The (blocks, new tokens) bucket of an extend by `new` tokens over `cached` ones."""
        context = min(round_up(cached, self.context_step), self.fused.model.config.max_seq_len)
        return -(-context // self.tokens_per_page), min(round_up(new, self.new_step), self.max_new)

    def warm(self, cached: int) -> None:
        """Capture the graphs of every new-token bucket and batch size over `cached` tokens' bucket now."""
        for m in range(self.new_step, self.max_new + self.new_step, self.new_step):
            blocks, new = self.bucket(cached, min(m, self.max_new))
            b = 1
            while b <= self.max_batch:
                self._graph(b, blocks, new)
                b *= 2

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the static inputs of every bucket captured so far (graph workspaces excluded)."""
        tensors = [t for b in self._buffers.values() for t in (b.block_table, b.start, b.actions_gaps, b.emb)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _graph(self, batch: int, blocks: int, m: int) -> tuple[_Buffers, tuple[torch.cuda.CUDAGraph, torch.Tensor]]:
        buffers = self._buffers.get((blocks, m))
        if buffers is None:
            buffers = self._buffers[(blocks, m)] = _Buffers(self.fused, self.max_batch, blocks, m)
        graph = self._graphs.get((batch, blocks, m))
        if graph is None:
            table, start = buffers.block_table[:batch], buffers.start[:batch]
            actions, gaps, emb = buffers.actions_gaps[0, :batch], buffers.actions_gaps[1, :batch], buffers.emb[:batch]
            graph = self._graphs[(batch, blocks, m)] = capture(
                lambda: self.fused.extend_paged_core(self.kv_pages, table, start, gaps, emb, actions),
                self.kv_pages.device,
                self._capture_lock,
            )
        return buffers, graph

    def extend_many(self, requests: Sequence[ExtendInput]) -> list[torch.Tensor]:
        """The new tokens' K/V [L, m_i, W] of each request, all from one graph replay; every request
        must fall in the bucket of the batch's longest context and most new tokens (`applies`)."""
        if not requests or len(requests) > self.max_batch:
            raise ValueError(f"requests: must hold 1..{self.max_batch} ExtendInputs, got {len(requests)}")
        news = [r.new_emb.shape[0] for r in requests]
        if not all(self.applies(r.cached, m) for r, m in zip(requests, news)):
            raise ValueError(f"requests: each needs a cached prefix and 1..{self.max_new} new tokens")
        batch = len(requests)
        padded = 1 << (batch - 1).bit_length()
        blocks, m = self.bucket(max(r.cached for r in requests), max(news))
        buffers, (graph, kv) = self._graph(padded, blocks, m)
        table = np.zeros((batch, blocks), dtype=np.int32)
        actions_gaps = np.zeros((2, padded, m), dtype=np.int64)
        start = np.zeros(padded, dtype=np.int64)  # padding slots: no context to read
        for b, (r, n) in enumerate(zip(requests, news)):
            table[b, : len(r.pages)] = r.pages
            actions_gaps[0, b, :n] = r.new_actions
            actions_gaps[1, b, :n] = r.gaps
            start[b] = r.cached
        device = buffers.start.device
        with torch.inference_mode():
            to_device(table, device, out=buffers.block_table[:batch])
            to_device(start, device, out=buffers.start[:padded])
            to_device(actions_gaps, device, out=buffers.actions_gaps[:, :padded])
            for b, (r, n) in enumerate(zip(requests, news)):
                buffers.emb[b, :n].copy_(r.new_emb)
            graph.replay()
            out = kv[:, :batch].clone()  # the next replay of this graph overwrites its output
        return [out[:, b, :n] for b, n in enumerate(news)]
