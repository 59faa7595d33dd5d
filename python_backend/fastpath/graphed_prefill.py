"""A whole-history prefill (a KV miss) as CUDA graphs, one per history-length bucket.

Eager prefill of the `large` preset at 4096 tokens launches ~100 kernels
from Python: ~6-9 ms of wall time for ~1.2 ms of GPU work on the H100
(docs/gpu.md (a)). Replaying one graph removes the launches. A graph needs
fixed shapes, so a history of n tokens runs in the bucket of N >= n tokens
(a multiple of `step`, at most max_seq_len) with the tail padded: attention is
causal and every time feature looks only backwards (the gap to the previous
event), so padding after the last real token cannot change the K/V of any
real token, and the first n rows of the bucket's K/V are the request's.

Captures happen lazily on the request thread under `capture_lock` (see
`cuda_graphs.capture`).
"""

from __future__ import annotations

import contextlib

import torch

from helmrec.fastpath.cuda_graphs import capture, require_cuda, round_up
from helmrec.fastpath.fused_model import FusedHSTU


class _PrefillGraph:
    """One captured prefill of N tokens and its static inputs/output."""

    def __init__(self, fused: FusedHSTU, n: int, lock: contextlib.AbstractContextManager | None) -> None:
        model = fused.model
        w = model.item_emb.weight
        self.emb = w.new_zeros(n, model.config.d_model)
        self.ts = torch.zeros(n, dtype=torch.int64, device=w.device)
        self.actions = torch.zeros(n, dtype=torch.int64, device=w.device)
        self.graph, self.kv = capture(lambda: fused.prefill(self.emb, self.ts, self.actions), w.device, lock)


class GraphedPrefill:
    """`FusedHSTU.prefill` replayed from CUDA graphs captured lazily per length bucket."""

    def __init__(self, fused: FusedHSTU, step: int = 512, capture_lock: contextlib.AbstractContextManager | None = None) -> None:
        require_cuda(fused, "GraphedPrefill")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"GraphedPrefill step must be an int >= 1, got {step!r}")
        self.fused = fused
        self.step = step
        self._capture_lock = capture_lock
        self._graphs: dict[int, _PrefillGraph] = {}

    def bucket(self, n: int) -> int:
        """Tokens the graph for an n-token history runs: n rounded up to `step`, capped at max_seq_len."""
        return min(round_up(n, self.step), self.fused.model.config.max_seq_len)

    def warm(self, n: int) -> None:
        """Capture the graph of an n-token history's bucket now, not on a request."""
        self._graph(self.bucket(n))

    def _graph(self, key: int) -> _PrefillGraph:
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _PrefillGraph(self.fused, key, self._capture_lock)
        return graph

    def prefill(self, hist_emb: torch.Tensor, hist_ts: torch.Tensor, hist_actions: torch.Tensor) -> torch.Tensor:
        """Same result as `FusedHSTU.prefill` (kv [L, n, W], a fresh tensor); inputs on the model's device."""
        n = hist_emb.shape[0]
        limit = self.fused.model.config.max_seq_len
        if not 0 < n <= limit:
            raise ValueError(f"hist_emb: GraphedPrefill takes 1..{limit} tokens, got {n}")
        key = self.bucket(n)
        graph = self._graph(key)
        with torch.inference_mode():
            graph.emb[:n].copy_(hist_emb)
            graph.emb[n:].zero_()
            graph.ts[:n].copy_(hist_ts)
            graph.ts[n:].copy_(hist_ts[-1].expand(key - n))  # zero gaps after the last event
            graph.actions[:n].copy_(hist_actions)
            graph.actions[n:].zero_()
            graph.graph.replay()
            return graph.kv[:, :n].clone()
