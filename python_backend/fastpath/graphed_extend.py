"""A returning user's incremental prefill (a partial KV hit) as CUDA graphs.

The common request of a live recommender is a user coming back with a few new
events: the pool holds the K/V of the old history and only the new tokens are
computed. Eager, that step is launch-bound like the prefill (~4-5 ms wall for
~0.5 ms of GPU work, `large` at 4k history, docs/gpu.md (a)). One graph per
bucket of (cached length, new tokens) replays it with one launch:

- the cached K/V is copied into a context buffer of N0 >= n0 rows whose tail is
  zero (a zero key adds SiLU(0) = 0 to every query);
- the new tokens are padded to M >= m rows at the end (attention is causal, so
  rows after the real ones cannot reach them), with their positions and time
  gaps fed as tensors (`FusedHSTU.extend_core`).

Graphs of one context size share its buffer. Histories with more than
`max_new` new tokens take the eager path (a rare, long absence). Captures
happen lazily on the request thread under `capture_lock` (see `cuda_graphs.capture`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from helmrec.fastpath.cuda_graphs import capture, require_cuda, round_up
from helmrec.fastpath.fused_model import FusedHSTU
from helmrec.hstu.features import previous_event_gaps


@dataclass
class _Context:
    """The static cached-K/V input of every graph with N0 context rows."""

    kv: torch.Tensor  # [L, N0, W]
    filled: int = 0  # rows that may be non-zero from an earlier request


class _ExtendGraph:
    """One captured extend of M new tokens over a context buffer, and its static inputs/output."""

    def __init__(self, fused: FusedHSTU, context: _Context, m: int, lock: contextlib.AbstractContextManager | None) -> None:
        model = fused.model
        w = model.item_emb.weight
        self.emb = w.new_zeros(m, model.config.d_model)
        self.actions = torch.zeros(m, dtype=torch.int64, device=w.device)
        self.gaps = torch.zeros(m, dtype=torch.int64, device=w.device)
        self.start = torch.zeros((), dtype=torch.int64, device=w.device)
        self.graph, self.kv = capture(
            lambda: fused.extend_core(context.kv, self.start, self.gaps, self.emb, self.actions), w.device, lock
        )


class GraphedExtend:
    """`FusedHSTU.extend_suffix` replayed from CUDA graphs per (context, new tokens) bucket."""

    def __init__(
        self,
        fused: FusedHSTU,
        context_step: int = 512,
        new_step: int = 16,
        max_new: int = 64,
        capture_lock: contextlib.AbstractContextManager | None = None,
    ) -> None:
        require_cuda(fused, "GraphedExtend")
        for name, value in (("context_step", context_step), ("new_step", new_step), ("max_new", max_new)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GraphedExtend {name} must be an int >= 1, got {value!r}")
        self.fused = fused
        self.context_step = context_step
        self.new_step = new_step
        self.max_new = max_new
        self._capture_lock = capture_lock
        self._contexts: dict[int, _Context] = {}
        self._graphs: dict[tuple[int, int], _ExtendGraph] = {}

    def applies(self, cached: int, new: int) -> bool:
        """Whether (cached, new) tokens run from a graph: a cached prefix and 1..max_new new tokens."""
        return cached > 0 and 0 < new <= self.max_new

    def warm(self, cached: int) -> None:
        """Capture the graphs of every new-token bucket over `cached` tokens' context bucket now."""
        for m in range(self.new_step, self.max_new + self.new_step, self.new_step):
            self._graph(cached, min(m, self.max_new))

    def _graph(self, n0: int, m: int) -> tuple[_Context, _ExtendGraph]:
        """The context buffer and graph of the bucket of (n0 cached, m new) tokens, captured if new."""
        cfg = self.fused.model.config
        c = min(round_up(n0, self.context_step), cfg.max_seq_len)
        b = round_up(m, self.new_step)
        context = self._contexts.get(c)
        if context is None:
            context = self._contexts[c] = _Context(self.fused.model.item_emb.weight.new_zeros(cfg.num_layers, c, cfg.kv_width))
        graph = self._graphs.get((c, b))
        if graph is None:
            graph = self._graphs[(c, b)] = _ExtendGraph(self.fused, context, b, self._capture_lock)
        return context, graph

    def extend_suffix(
        self, kv: torch.Tensor, new_emb: torch.Tensor, hist_ts: torch.Tensor, new_actions: torch.Tensor
    ) -> torch.Tensor:
        """Same result as `FusedHSTU.extend_suffix` (kv [L, m, W] of the new tokens, a fresh tensor)."""
        n0, m = kv.shape[1], new_emb.shape[0]
        if not self.applies(n0, m):
            raise ValueError(f"GraphedExtend takes a cached prefix and 1..{self.max_new} new tokens, got {n0} and {m}")
        context, graph = self._graph(n0, m)
        with torch.inference_mode():
            context.kv[:, :n0].copy_(kv)
            if context.filled > n0:
                context.kv[:, n0 : context.filled].zero_()
            context.filled = n0
            graph.emb[:m].copy_(new_emb)
            graph.emb[m:].zero_()
            graph.actions[:m].copy_(new_actions)
            graph.actions[m:].zero_()
            graph.gaps[:m].copy_(previous_event_gaps(hist_ts, n0))
            graph.gaps[m:].zero_()
            graph.start.fill_(n0)
            graph.graph.replay()
            return graph.kv[:, :m].clone()
