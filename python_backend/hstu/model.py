"""The HSTU network with a KV-cached, single-request inference API.

Token layout. History token i (0-based, oldest first) has position i, counted
from the start of the history, so a token's position never changes when the
history grows. Every candidate has position n (the next slot after an n-token
history) and attends to the whole history and to itself, never to another
candidate (target-aware ranking).

Time. A history token's features depend only on itself and the tokens before
it, never on the query time or on later tokens, so the K/V of a prefix is the
prefix of the K/V of any longer history and can be cached:
  research: attention bias `rab_time(log_bucket(t_i - t_j))` between a history
    query i and key j; the reference uses the *next* token's time for query i,
    which a cached prefix cannot know yet, so we use t_i itself.
  production: input embedding `time_emb(sqrt_bucket(t_i - t_{i-1}))` (gap to the
    previous event) instead of DLRMv3's `t_query - t_i`, which would change
    every cached token whenever the query time changes.
Candidates use the query time freely: research bias `log_bucket(t_query - t_j)`,
production input `sqrt_bucket(t_query - t_{n-1})`.

KV layout: `kv[l, i] = [K_l(i) of all heads | V_l(i) of all heads]`, width
`kv_width = H * (d_qk + d_v)`; positions and timestamps are not stored because
the caller passes `hist_ts` and positions are implicit in the token index.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from helmrec import schema
from helmrec.hstu.config import HSTUConfig
from helmrec.hstu.features import log_time_bucket, previous_event_gaps, sqrt_time_bucket
from helmrec.hstu.layer import HSTULayer


class HSTU(nn.Module):
    """HSTU encoder + multi-task ranking head; see the module docstring for the token layout."""

    def __init__(self, config: HSTUConfig) -> None:
        super().__init__()
        if not isinstance(config, HSTUConfig):
            raise TypeError(f"HSTU needs an HSTUConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.research = config.variant == "research"
        self.item_emb = nn.Embedding(config.num_items, d)
        self.action_emb = nn.Embedding(config.num_actions, d)
        # Candidates have no action yet; a learned marker takes the action's place.
        self.target_marker = nn.Parameter(torch.zeros(d))
        self.pos_emb = nn.Embedding(config.max_seq_len + 1, d)
        self.time_emb = None if self.research else nn.Embedding(config.num_time_buckets, d)
        for table in (self.item_emb, self.action_emb, self.pos_emb) + (() if self.time_emb is None else (self.time_emb,)):
            nn.init.normal_(table.weight, 0.0, 1.0 / math.sqrt(d))
        self.input_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(HSTULayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=1e-6)
        # Head over [h, h * e]: the candidate's output state and its interaction
        # with the candidate's own embedding, one logit per task.
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, config.num_tasks))
        self.emb_scale = math.sqrt(d)

    # ------------------------------------------------------------------ public API

    @property
    def kv_width(self) -> int:
        return self.config.kv_width

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:
        """Plain item-table lookup (the uncached path): ids [n] -> [n, d_model]."""
        self._check_ids("ids", ids, self.config.num_items, "item")
        return self.item_emb(ids)

    def prefill(self, hist_emb: torch.Tensor, hist_ts: torch.Tensor, hist_actions: torch.Tensor) -> torch.Tensor:
        """K/V of every layer for a whole history: [n, D], [n], [n] -> kv [L, n, kv_width]."""
        return self.extend(self.empty_kv(), hist_emb, hist_ts, hist_actions)

    def extend(
        self, kv: torch.Tensor, new_emb: torch.Tensor, hist_ts: torch.Tensor, new_actions: torch.Tensor
    ) -> torch.Tensor:
        """Incremental prefill: kv [L, n0, W] + n1 new tokens -> kv [L, n0 + n1, W].

        `hist_ts` holds ALL n0 + n1 timestamps (old, then new): the new tokens'
        time features reach back to cached ones. Only the n1 new tokens are computed.
        """
        return torch.cat([kv, self.extend_suffix(kv, new_emb, hist_ts, new_actions)], dim=1)

    def extend_suffix(
        self, kv: torch.Tensor, new_emb: torch.Tensor, hist_ts: torch.Tensor, new_actions: torch.Tensor
    ) -> torch.Tensor:
        """Like `extend` but returns only the new tokens' kv [L, n1, W].

        A paged cache appends these pages without copying the n0 cached tokens again.
        """
        cfg = self.config
        self._check_kv(kv)
        n0 = kv.shape[1]
        n1 = self._check_rows("new_emb", new_emb)
        n = n0 + n1
        schema.check_history_length("new_emb", n, cfg.max_seq_len)
        self._check_ts("hist_ts", hist_ts, n)
        self._check_ids("new_actions", new_actions, cfg.num_actions, "action", length=n1)
        return self.extend_suffix_unchecked(kv, new_emb, hist_ts, new_actions)

    def extend_suffix_unchecked(
        self, kv: torch.Tensor, new_emb: torch.Tensor, hist_ts: torch.Tensor, new_actions: torch.Tensor
    ) -> torch.Tensor:
        """`extend_suffix` without input checks: the traceable body the ONNX export uses."""
        n0, n = kv.shape[1], hist_ts.shape[0]
        dev = new_emb.device
        x = self._history_input(new_emb, new_actions, hist_ts, n0)
        pos_q = torch.arange(n0, n, device=dev)
        pos_k = torch.arange(0, n, device=dev)
        keep = pos_k.unsqueeze(0) <= pos_q.unsqueeze(1)  # causal over the history
        rel_pos, time_bucket = self._bias_indices(pos_q, hist_ts[n0:], pos_k, hist_ts)
        new_kv = []
        for i, layer in enumerate(self.layers):
            k_ctx, v_ctx = self._unpack(kv[i])
            bias = None if rel_pos is None else layer.pair_bias(rel_pos, time_bucket)
            x, k, v = layer(x, k_ctx, v_ctx, keep, bias, causal=True)
            new_kv.append(torch.cat([k.flatten(-2), v.flatten(-2)], dim=-1))
        return torch.stack(new_kv)

    def rank(self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query_ts: int) -> torch.Tensor:
        """Scores of c candidates after a cached n-token history: -> [c, num_tasks] float32 logits."""
        cfg = self.config
        self._check_kv(kv)
        n = kv.shape[1]
        self._check_ts("hist_ts", hist_ts, n)
        schema.check_candidate_count("cand_emb", self._check_rows("cand_emb", cand_emb), cfg.max_candidates)
        query = torch.tensor(int(query_ts), dtype=torch.int64, device=cand_emb.device)
        return self.rank_unchecked(kv, hist_ts, cand_emb, query)

    def rank_unchecked(
        self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """`rank` without input checks, query time as a 0-d int64 tensor: the traceable body."""
        cfg = self.config
        n, c = kv.shape[1], cand_emb.shape[0]
        dev = cand_emb.device
        query = query.reshape(())
        gap = query - hist_ts[-1] if n > 0 else torch.zeros_like(query)  # since the last event
        x = self._candidate_input(cand_emb, torch.full((c,), n, device=dev), gap.expand(c))
        bias_hist_idx = None
        if self.research:
            pos_k = torch.arange(n, device=dev)
            bias_hist_idx = ((n - pos_k).clamp(0, cfg.max_seq_len), log_time_bucket(query - hist_ts, cfg.num_time_buckets))
            zero = torch.zeros(1, dtype=torch.int64, device=dev)
        for i, layer in enumerate(self.layers):
            k_hist, v_hist = self._unpack(kv[i])
            bias_hist = bias_self = None
            if bias_hist_idx is not None:
                bias_hist = layer.pair_bias(*bias_hist_idx).unsqueeze(0)  # same for every candidate
                bias_self = layer.pair_bias(zero, zero)  # distance 0, time gap 0
            x = layer.forward_candidates(x, k_hist, v_hist, bias_hist, bias_self)
        return self._head(x, cand_emb)

    def forward(
        self,
        hist_emb: torch.Tensor,
        hist_ts: torch.Tensor,
        hist_actions: torch.Tensor,
        cand_emb: torch.Tensor,
        query_ts: int,
    ) -> torch.Tensor:
        """Uncached reference: one pass over [history; candidates] with one mask -> [c, T] float32.

        Candidates go through the masked attention (`HSTULayer.forward`) here
        and through the split history/diagonal attention (`forward_candidates`)
        in `rank`, so the rank-after-prefill test compares two independent
        computations of the same function.
        """
        cfg = self.config
        n = self._check_rows("hist_emb", hist_emb)
        schema.check_history_length("hist_emb", n, cfg.max_seq_len)
        self._check_ts("hist_ts", hist_ts, n)
        self._check_ids("hist_actions", hist_actions, cfg.num_actions, "action", length=n)
        schema.check_candidate_count("cand_emb", self._check_rows("cand_emb", cand_emb), cfg.max_candidates)
        query = torch.tensor(int(query_ts), dtype=torch.int64, device=cand_emb.device)
        return self.forward_unchecked(hist_emb, hist_ts, hist_actions, cand_emb, query)

    def forward_unchecked(
        self,
        hist_emb: torch.Tensor,
        hist_ts: torch.Tensor,
        hist_actions: torch.Tensor,
        cand_emb: torch.Tensor,
        query: torch.Tensor,
    ) -> torch.Tensor:
        """`forward` without input checks, query time as an int64 tensor: the traceable body."""
        cfg = self.config
        n, c = hist_emb.shape[0], cand_emb.shape[0]
        dev = cand_emb.device
        query = query.reshape(()).expand(c)
        last = hist_ts[-1].expand(c) if n > 0 else query
        x = torch.cat(
            [
                self._history_input(hist_emb, hist_actions, hist_ts, 0),
                self._candidate_input(cand_emb, torch.full((c,), n, device=dev), query - last),
            ]
        )
        m = n + c
        idx = torch.arange(m, device=dev)
        pos = torch.where(idx < n, idx, n)
        times = torch.cat([hist_ts, query])
        # history: causal; candidates: every history token and themselves
        keep = (idx.unsqueeze(0) <= idx.unsqueeze(1)) & ((idx.unsqueeze(0) < n) | (idx.unsqueeze(0) == idx.unsqueeze(1)))
        rel_pos, time_bucket = self._bias_indices(pos, times, pos, times)
        no_k = x.new_zeros(0, cfg.num_heads, cfg.d_qk)
        no_v = x.new_zeros(0, cfg.num_heads, cfg.d_v)
        for layer in self.layers:
            bias = None if rel_pos is None else layer.pair_bias(rel_pos, time_bucket)
            x, _, _ = layer(x, no_k, no_v, keep, bias)
        return self._head(x[n:], cand_emb)

    def score(
        self,
        hist_ids: torch.Tensor,
        hist_ts: torch.Tensor,
        hist_actions: torch.Tensor,
        cand_ids: torch.Tensor,
        query_ts: int,
    ) -> torch.Tensor:
        """Ids in, scores out: embed_items + forward (the bare network, no cache)."""
        return self.forward(self.embed_items(hist_ids), hist_ts, hist_actions, self.embed_items(cand_ids), query_ts)

    def forward_batch(
        self,
        hist_emb: torch.Tensor,
        hist_ts: torch.Tensor,
        hist_actions: torch.Tensor,
        cand_emb: torch.Tensor,
        cand_cutoff: torch.Tensor,
        cand_ts: torch.Tensor,
    ) -> torch.Tensor:
        """Training path: batched prefill, then every candidate ranked after its own prefix.

        hist_* [B, n(, D)], right-padded (pad timestamps non-decreasing);
        cand_emb [B, c, D]; candidate k of user b is ranked after the prefix
        hist[b, :cand_cutoff[b, k]] at time cand_ts[b, k], which is exactly
        `rank(prefill(prefix), ...)` because prefix K/V never depend on later
        tokens. One pass thus trains many next-item predictions per user.
        Padding is never seen: history tokens only look back and candidates only
        look below their cutoff (cand_cutoff must not exceed the user's length).
        Returns [B, c, T] float32.
        """
        cfg = self.config
        bsz, n = hist_ts.shape
        dev = cand_emb.device
        hist_gaps = torch.cat([torch.zeros_like(hist_ts[:, :1]), hist_ts[:, 1:] - hist_ts[:, :-1]], dim=1)
        positions = torch.arange(n, device=dev)
        x = self._history_features(hist_emb, hist_actions, positions, hist_gaps)
        causal = positions.unsqueeze(0) <= positions.unsqueeze(1)
        rel_pos, time_bucket = None, None
        if self.research:
            rel_pos = (positions.unsqueeze(1) - positions.unsqueeze(0)).clamp(0, cfg.max_seq_len)
            time_bucket = log_time_bucket(hist_ts.unsqueeze(2) - hist_ts.unsqueeze(1), cfg.num_time_buckets)
        no_k = x.new_zeros(bsz, 0, cfg.num_heads, cfg.d_qk)
        no_v = x.new_zeros(bsz, 0, cfg.num_heads, cfg.d_v)
        hist_kv = []
        for layer in self.layers:
            bias = None if rel_pos is None else layer.pair_bias(rel_pos, time_bucket)
            x, k, v = layer(x, no_k, no_v, causal, bias)
            hist_kv.append((k, v))

        prev_ts = hist_ts.gather(1, (cand_cutoff - 1).clamp(min=0)) if n > 0 else cand_ts
        cand_gaps = torch.where(cand_cutoff > 0, cand_ts - prev_ts, torch.zeros_like(cand_ts))
        xc = self._candidate_input(cand_emb, cand_cutoff, cand_gaps)
        keep = positions.view(1, 1, n) < cand_cutoff.unsqueeze(-1)  # [B, c, n]
        if self.research:
            rel_c = (cand_cutoff.unsqueeze(-1) - positions).clamp(0, cfg.max_seq_len)
            time_c = log_time_bucket(cand_ts.unsqueeze(-1) - hist_ts.unsqueeze(1), cfg.num_time_buckets)
            zero = torch.zeros(1, dtype=torch.int64, device=dev)
        for layer, (k, v) in zip(self.layers, hist_kv):
            bias_hist = bias_self = None
            if self.research:
                bias_hist, bias_self = layer.pair_bias(rel_c, time_c), layer.pair_bias(zero, zero)
            xc = layer.forward_candidates(xc, k, v, bias_hist, bias_self, keep)
        return self._head(xc, cand_emb)

    def empty_kv(self) -> torch.Tensor:
        """The kv of an empty history, on the module's device and dtype."""
        p = self.item_emb.weight
        return p.new_zeros(self.config.num_layers, 0, self.kv_width)

    # ------------------------------------------------------------------ internals

    def _history_input(
        self, emb: torch.Tensor, actions: torch.Tensor, hist_ts: torch.Tensor, start: int
    ) -> torch.Tensor:
        positions = torch.arange(start, start + emb.shape[0], device=emb.device)
        return self._history_features(emb, actions, positions, previous_event_gaps(hist_ts, start))

    def _history_features(
        self, emb: torch.Tensor, actions: torch.Tensor, positions: torch.Tensor, gaps: torch.Tensor
    ) -> torch.Tensor:
        """(item + action) * sqrt(D) + pos_emb(position) [+ time_emb(gap bucket), production]."""
        x = (emb + self.action_emb(actions)) * self.emb_scale + self.pos_emb(positions)
        if self.time_emb is not None:
            x = x + self.time_emb(sqrt_time_bucket(gaps, self.config.num_time_buckets))
        return self.input_dropout(x)

    def _candidate_input(self, emb: torch.Tensor, positions: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(item + marker) * sqrt(D) + pos_emb(n) [+ time_emb(bucket(t_query - t_last)), production]."""
        x = (emb + self.target_marker) * self.emb_scale + self.pos_emb(positions)
        if self.time_emb is not None:
            x = x + self.time_emb(sqrt_time_bucket(gaps, self.config.num_time_buckets))
        return self.input_dropout(x)

    def _bias_indices(
        self, pos_q: torch.Tensor, ts_q: torch.Tensor, pos_k: torch.Tensor, ts_k: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Research rab indices (relative position, log time bucket) per query/key pair."""
        if not self.research:
            return None, None
        cfg = self.config
        rel = (pos_q.unsqueeze(1) - pos_k.unsqueeze(0)).clamp(0, cfg.max_seq_len)
        return rel, log_time_bucket(ts_q.unsqueeze(1) - ts_k.unsqueeze(0), cfg.num_time_buckets)

    def _unpack(self, kv_layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        n = kv_layer.shape[0]
        split = cfg.num_heads * cfg.d_qk
        return (
            kv_layer[:, :split].reshape(n, cfg.num_heads, cfg.d_qk),
            kv_layer[:, split:].reshape(n, cfg.num_heads, cfg.d_v),
        )

    def _head(self, x: torch.Tensor, cand_emb: torch.Tensor) -> torch.Tensor:
        h = self.final_norm(x)
        return self.head(torch.cat([h, h * cand_emb], dim=-1)).float()

    # ------------------------------------------------------------------ input checks
    # What only the network knows (d_model, kv layout, its dtype) is checked here; every
    # rule a request states too (lengths, id ranges) is schema's, called with these names.

    def _check_rows(self, name: str, emb: torch.Tensor) -> int:
        d = self.config.d_model
        if emb.dim() != 2 or emb.shape[1] != d:
            raise ValueError(f"{name}: must have shape [n, {d}] (d_model), got {list(emb.shape)}")
        if emb.dtype != self.item_emb.weight.dtype:
            raise ValueError(f"{name}: dtype must be the model's {self.item_emb.weight.dtype}, got {emb.dtype}")
        return emb.shape[0]

    def _check_kv(self, kv: torch.Tensor) -> None:
        cfg = self.config
        if kv.dim() != 3 or kv.shape[0] != cfg.num_layers or kv.shape[2] != self.kv_width:
            raise ValueError(
                f"kv: must have shape [{cfg.num_layers}, n, {self.kv_width}] (num_layers, tokens, kv_width), "
                f"got {list(kv.shape)}"
            )
        if kv.dtype != self.item_emb.weight.dtype:
            raise ValueError(f"kv: dtype must be the model's {self.item_emb.weight.dtype}, got {kv.dtype}")

    @staticmethod
    def _check_ts(name: str, ts: torch.Tensor, n: int) -> None:
        if ts.dim() != 1 or ts.shape[0] != n or ts.dtype != torch.int64:
            raise ValueError(f"{name}: must be an int64 vector of length {n}, got {ts.dtype} {list(ts.shape)}")

    @staticmethod
    def _check_ids(name: str, ids: torch.Tensor, upper: int, what: str, length: int | None = None) -> None:
        if ids.dim() != 1 or ids.dtype != torch.int64:
            raise ValueError(f"{name}: must be an int64 vector, got {ids.dtype} {list(ids.shape)}")
        if length is not None and ids.shape[0] != length:
            raise ValueError(f"{name}: length {ids.shape[0]} must be {length}")
        if ids.numel():
            schema.check_id_range(name, int(ids.min()), int(ids.max()), upper, what)
