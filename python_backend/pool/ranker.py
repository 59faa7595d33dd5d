"""The cached request path: what `hstu_pool` calls once per request.

`PooledRanker.rank` = KV prefix lookup -> EMB lookup of the uncovered history
suffix and the candidates -> incremental prefill of the suffix only -> rank ->
store the new KV and queue the missed rows for admission. Scores equal the
uncached `HSTU.forward` on the same request (within fp tolerance): a cached
row is a byte copy of the host row, and a cached prefix's K/V is exactly the
prefix of the whole history's K/V (see python_backend/hstu/model.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from helmrec import schema
from helmrec.fastpath.fused_model import FusedHSTU
from helmrec.fastpath.graphed_prefill import GraphedPrefill
from helmrec.fastpath.paged_extend import ExtendInput, PagedExtend
from helmrec.fastpath.paged_rank import PagedInput, PagedRank
from helmrec.hstu.features import previous_event_gaps
from helmrec.hstu.model import HSTU
from helmrec.kernels.attention import triton_importable
from helmrec.pool.background import BackgroundWorker, RefillThrottle
from helmrec.pool.config import PoolConfig
from helmrec.pool.host_table import HostTable
from helmrec.pool.kv_cache import HistoryTokens
from helmrec.pool.pool import LookupQuery, Pool, PoolLookup
from helmrec.pool.stats import PoolStats

# How often the background thread wakes: short enough that a new alpha starts
# moving within milliseconds, long enough to cost nothing when idle.
DEFAULT_BACKGROUND_INTERVAL_S = 0.002


@dataclass(frozen=True)
class RankRequest:
    """One ranking request as a library caller builds it: a user's history (oldest first),
    the candidates to score and the time to score them at.

    Nothing is checked here: `PooledRanker.rank` holds it to `helmrec.schema`'s rules,
    whose errors name the public tensor of each field (hist_ids HISTORY_ITEM_IDS, hist_ts
    HISTORY_TIMESTAMPS, hist_actions HISTORY_ACTIONS, cand_ids CANDIDATE_ITEM_IDS,
    query_ts QUERY_TIMESTAMP). Unlike a client of `hstu_ensemble`, a library caller
    gives the query time, so an empty history (a cold-start user) is allowed."""

    user_id: int
    hist_ids: torch.Tensor
    hist_ts: torch.Tensor
    hist_actions: torch.Tensor
    cand_ids: torch.Tensor
    query_ts: int

    def validated(self, limits: schema.Limits) -> schema.ValidRequest:
        """This request held to schema's rules; zero-copy for int64 host tensors."""
        return schema.validate(
            {
                schema.USER_ID: np.asarray([self.user_id]),
                schema.HISTORY_ITEM_IDS: _host(self.hist_ids),
                schema.HISTORY_TIMESTAMPS: _host(self.hist_ts),
                schema.HISTORY_ACTIONS: _host(self.hist_actions),
                schema.CANDIDATE_ITEM_IDS: _host(self.cand_ids),
                schema.QUERY_TIMESTAMP: np.asarray([self.query_ts]),
            },
            limits,
        )


def _host(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _on_host(valid: schema.ValidRequest) -> RankRequest:
    """A validated request as the torch tensors the pool takes (zero-copy views of its arrays)."""
    return RankRequest(
        valid.user_id,
        torch.from_numpy(valid.hist_ids),
        torch.from_numpy(valid.hist_ts),
        torch.from_numpy(valid.hist_actions),
        torch.from_numpy(valid.cand_ids),
        valid.query_ts,
    )


@dataclass(frozen=True)
class GraphedSteps:
    """The request path's steps replayed from CUDA graphs."""

    prefill: GraphedPrefill
    extend: PagedExtend
    rank: PagedRank


def graphed_steps(model: HSTU, kv_pages: torch.Tensor, capture_lock: threading.Lock, max_batch: int = 32) -> GraphedSteps | None:
    """Prefill, extend and rank replayed from CUDA graphs, where they apply: on a GPU (eager,
    each is launch-bound: for `large` at 4k history the rank step is ~4 ms vs ~0.5 ms
    replayed) with the bias-free production variant (the fused kernels do not take the
    research variant's relative bias) and the `triton` package present. Extend and rank read
    the cached K/V in place from the pool's `kv_pages`. Graphs are captured under
    `capture_lock`, which the background thread holds around its rounds."""
    on_gpu = model.item_emb.weight.device.type == "cuda"
    if not on_gpu or model.config.variant != "production" or not triton_importable():
        return None
    fused = FusedHSTU(model)
    return GraphedSteps(
        GraphedPrefill(fused, capture_lock=capture_lock),
        PagedExtend(fused, kv_pages, capture_lock=capture_lock, max_batch=max_batch),
        PagedRank(fused, kv_pages, capture_lock=capture_lock, max_batch=max_batch),
    )


def _rounds(members: Sequence[int], users: Sequence[int]) -> list[list[int]]:
    """`members` (indices into `users`) split, in order, into rounds in which no user appears twice."""
    rounds: list[list[int]] = []
    seen: list[set[int]] = []
    for i in members:
        k = next((k for k, s in enumerate(seen) if users[i] not in s), len(rounds))
        if k == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[k].append(i)
        seen[k].add(users[i])
    return rounds


def _gap_s(req: RankRequest) -> int:
    """The query's gap in seconds since the last history event (0 for an empty history)."""
    return req.query_ts - int(req.hist_ts[-1]) if req.hist_ts.numel() else 0


class PooledRanker:
    """HSTU ranking through the shared pool; owns the pool and its background thread."""

    def __init__(
        self,
        model: HSTU,
        config: PoolConfig,
        *,
        background_interval_s: float | None = DEFAULT_BACKGROUND_INTERVAL_S,
        graph_max_batch: int = 32,
        in_place: bool | None = None,
    ) -> None:
        """`background_interval_s=None` runs no thread; the caller then drives `step_background`
        (benchmarks and tests that need a reproducible order of events). `graph_max_batch`
        bounds the requests of one extend or rank replay (and so its buffers' memory).
        `in_place`: extend and rank from the cached K/V where it lies in the pool's pages
        (`_rank_round_in_place`); None chooses it where the graphed steps apply (a GPU), True
        forces it elsewhere too (the production variant only: it runs `FusedHSTU` eagerly), so
        the CPU tests cover that path; False copies prefixes out and runs eagerly (no graphs)."""
        device = torch.device(config.device)
        weight = model.item_emb.weight
        param_device = next(p for name, p in model.named_parameters() if not name.startswith("item_emb")).device
        if param_device.type != device.type:
            raise ValueError(f"model lives on {param_device}, pool config asks for device {config.device!r}")
        self.model = model
        self.limits = schema.Limits.of(model.config)
        self._device = device
        # Held by a background round and by a CUDA-graph capture: never both at once.
        self._cuda_lock = threading.Lock()
        self.pool = Pool(config, HostTable(weight, device), model.config.num_layers, model.kv_width, weight.dtype)
        graphs = None if in_place is False else graphed_steps(model, self.pool.kv_cache.pages, self._cuda_lock, graph_max_batch)
        self._graphs = graphs
        self._in_place = graphs is not None if in_place is None else in_place
        if self._in_place and model.config.variant != "production":
            raise ValueError(f"in_place ranking needs the production variant (FusedHSTU), got {model.config.variant!r}")
        self._fused = FusedHSTU(model) if self._in_place else None
        self._throttle = RefillThrottle(config.refill_bandwidth_bytes_per_s, self.pool.host_table.row_bytes)
        self._worker = (
            BackgroundWorker(self._background_round, background_interval_s) if background_interval_s is not None else None
        )

    # -- the controller's side ---------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The split in effect now (EMB pages / all pages); trails the last `set_alpha` while moving."""
        return self.pool.alpha

    @property
    def target_alpha(self) -> float:
        return self.pool.target_alpha

    def set_alpha(self, alpha: float) -> None:
        self.pool.set_alpha(alpha)

    def stats(self) -> PoolStats:
        """Read-and-reset snapshot of the window since the previous call."""
        return self.pool.stats()

    def warm(self, shapes: Sequence[tuple[int, int]]) -> float:
        """Capture now every graph that requests of these (history length, candidates) shapes
        will replay (prefill, extend of 1..max_new new tokens, rank at every batch size), so
        no capture or compile runs on a request; returns the seconds it took. Without graphs
        (CPU, research variant) there is nothing to capture."""
        graphs = self._graphs
        if graphs is None:
            return 0.0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for n, c in shapes:
                graphs.prefill.warm(n)
                if n > 1:
                    graphs.extend.warm(n - 1)
                graphs.rank.warm(n, c)
        torch.cuda.synchronize(self._device)
        return time.perf_counter() - t0

    @property
    def graph_buffer_bytes(self) -> int:
        """Device bytes held by the extend and rank graphs' static buffers (graph workspaces excluded)."""
        return 0 if self._graphs is None else self._graphs.rank.buffer_bytes + self._graphs.extend.buffer_bytes

    # -- the request path ---------------------------------------------------------------------------
    def rank(self, req: RankRequest | schema.ValidRequest) -> torch.Tensor:
        """Scores [c, num_tasks] float32 on CPU for one request; ValueError (a
        schema.RequestError naming the tensor and the rule) for a request that breaks a rule."""
        result = self.rank_many([req])[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def rank_many(self, requests: Sequence[RankRequest | schema.ValidRequest]) -> list[torch.Tensor | ValueError]:
        """Scores [c_i, num_tasks] float32 on CPU of each request, or the ValueError that
        refused it alone: a bad request never fails the others.

        A `schema.ValidRequest` already passed schema's rules (hstu_pool validated it);
        a `RankRequest` is held to them here, so every rule is checked exactly once and a
        library caller gets the error a client would. Past that, nothing is checked
        again: the network's unchecked bodies run.

        The group is served in rounds in which no user appears twice (a user's second
        request must see the KV its first one stored); each round is one pool lookup
        pass, the history K/V of every request that is not a full KV hit, one graph
        replay per rank bucket, and one commit pass.
        """
        results: list[torch.Tensor | ValueError | None] = [None] * len(requests)
        valid: dict[int, RankRequest] = {}
        for i, req in enumerate(requests):
            try:
                valid[i] = _on_host(req if isinstance(req, schema.ValidRequest) else req.validated(self.limits))
            except schema.RequestError as exc:
                results[i] = exc
        users = [valid[i].user_id if i in valid else -1 for i in range(len(requests))]
        for members in _rounds(list(valid), users):
            for i, scores in zip(members, self._rank_round([valid[i] for i in members])):
                results[i] = scores
        return results  # type: ignore[return-value]

    def _rank_round(self, reqs: list[RankRequest]) -> list[torch.Tensor]:
        if self._in_place:
            return self._rank_round_in_place(reqs)
        dev = self._device
        tokens = [HistoryTokens(r.hist_ids, r.hist_ts, r.hist_actions) for r in reqs]
        with torch.inference_mode():
            found = self.pool.lookup_many([LookupQuery(r.user_id, t, r.hist_ids, r.cand_ids) for r, t in zip(reqs, tokens)])
            kvs = []
            for req, tok, f in zip(reqs, tokens, found):
                if f.prefix_len == tok.length and f.prefix_kv is not None:
                    kvs.append(f.prefix_kv)  # full hit: nothing to compute for the history
                else:
                    suffix = self._suffix_kv(f, req.hist_ts.to(dev), req.hist_actions[f.prefix_len :].to(dev))
                    kvs.append(torch.cat([f.prefix_kv, suffix], dim=1) if f.prefix_len else suffix)
            scores = [self._rank_eager(r, kv, f) for r, kv, f in zip(reqs, kvs, found)]
            self.pool.commit_many([(r.user_id, t, f, kv) for r, t, f, kv in zip(reqs, tokens, found, kvs)])
            return scores

    def _rank_round_in_place(self, reqs: list[RankRequest]) -> list[torch.Tensor]:
        """The GPU round: reused prefixes stay in the pool's pages (pinned until the round ends);
        returning users' new tokens are extended in batches over them, new users prefilled, and
        only the new K/V is stored; then the rank graphs read every history in place. No
        request's cached K/V is copied out of the pool or into a padded buffer. A request whose
        KV could not be cached (no room) ranks from a whole-history tensor, eagerly."""
        tokens = [HistoryTokens(r.hist_ids, r.hist_ts, r.hist_actions) for r in reqs]
        with torch.inference_mode():
            queries = [LookupQuery(r.user_id, t, r.hist_ids, r.cand_ids) for r, t in zip(reqs, tokens)]
            found = self.pool.lookup_many(queries, in_place=True)
            pinned = [r.user_id for r, f in zip(reqs, found) if f.prefix_len]
            try:
                news = self._new_kv(reqs, tokens, found)
                tables = self.pool.commit_many(
                    [(r.user_id, t, f, kv) for r, t, f, kv in zip(reqs, tokens, found, news)], in_place=True
                )
                pinned += [r.user_id for r, table in zip(reqs, tables) if table is not None]
                scores: list[torch.Tensor | None] = [None] * len(reqs)
                buckets: dict[tuple[int, int], list[PagedInput]] = {}
                members: dict[tuple[int, int], list[int]] = {}
                for i, (req, tok, f, table) in enumerate(zip(reqs, tokens, found, tables)):
                    if table is None:
                        kv = torch.cat([self.pool.read_prefix(f), news[i]], dim=1) if f.prefix_len else news[i]
                        scores[i] = self._rank_eager(req, kv, f)
                        continue
                    key = self._graphs.rank.bucket(tok.length, f.cand_emb.shape[0]) if self._graphs else (0, 0)
                    buckets.setdefault(key, []).append(PagedInput(table, tok.length, f.cand_emb, _gap_s(req)))
                    members.setdefault(key, []).append(i)
                for key, inputs in buckets.items():
                    for i, s in zip(members[key], self._rank_paged(inputs)):
                        scores[i] = s
                return scores  # type: ignore[return-value]
            finally:
                self.pool.unpin(pinned)

    def _new_kv(self, reqs: list[RankRequest], tokens: list[HistoryTokens], found: list[PoolLookup]) -> list[torch.Tensor]:
        """K/V [L, m, W] of each request's tokens past its reused prefix (none at a full hit, all at
        a miss): returning users' extends batched per bucket into one graph replay each, reading
        their prefixes in place; prefills from graphs; eager `FusedHSTU` where no graph applies."""
        dev, graphs, fused = self._device, self._graphs, self._fused
        assert fused is not None
        news: list[torch.Tensor | None] = [None] * len(reqs)
        batches: dict[tuple[int, int], list[int]] = {}
        for i, (req, tok, f) in enumerate(zip(reqs, tokens, found)):
            n0, m = f.prefix_len, tok.length - f.prefix_len
            if m == 0:
                news[i] = self.model.empty_kv()
            elif n0 == 0:
                news[i] = self._suffix_kv(f, req.hist_ts.to(dev), req.hist_actions.to(dev))
            elif graphs is not None and graphs.extend.applies(n0, m):
                batches.setdefault(graphs.extend.bucket(n0, m), []).append(i)
            else:  # a long absence (or no graphs): the same in-place extend, eagerly
                table = torch.tensor([f.prefix_pages], dtype=torch.int32, device=dev)
                start = torch.tensor([n0], dtype=torch.int64, device=dev)
                gaps = previous_event_gaps(req.hist_ts, n0).to(dev).unsqueeze(0)
                actions = req.hist_actions[n0:].to(dev).unsqueeze(0)
                kv = fused.extend_paged_core(self.pool.kv_cache.pages, table, start, gaps, f.suffix_emb.unsqueeze(0), actions)
                news[i] = kv[:, 0]
        if graphs is not None:
            step = graphs.extend.max_batch
            for chunk in (members[lo : lo + step] for members in batches.values() for lo in range(0, len(members), step)):
                inputs = [
                    ExtendInput(
                        found[i].prefix_pages,
                        found[i].prefix_len,
                        found[i].suffix_emb,
                        reqs[i].hist_actions[found[i].prefix_len :].numpy(),
                        previous_event_gaps(reqs[i].hist_ts, found[i].prefix_len).numpy(),
                    )
                    for i in chunk
                ]
                for i, kv in zip(chunk, graphs.extend.extend_many(inputs)):
                    news[i] = kv
        return news  # type: ignore[return-value]

    def _rank_paged(self, inputs: list[PagedInput]) -> list[torch.Tensor]:
        """Scores of requests ranked from the pool's pages: graph replays of up to `max_batch` on
        a GPU, else one eager `FusedHSTU.rank_paged_core` per request."""
        graphs = self._graphs
        if graphs is not None:
            step = graphs.rank.max_batch
            return [s for lo in range(0, len(inputs), step) for s in graphs.rank.rank_many(inputs[lo : lo + step])]
        assert self._fused is not None
        dev, pages, out = self._device, self.pool.kv_cache.pages, []
        for r in inputs:
            table = torch.tensor([list(r.pages) or [0]], dtype=torch.int32, device=dev)
            length, gap = (torch.tensor([v], dtype=torch.int64, device=dev) for v in (r.length, r.gap_s))
            out.append(self._fused.rank_paged_core(pages, table, length, gap, r.cand_emb.unsqueeze(0))[0].float().cpu())
        return out

    def _rank_eager(self, req: RankRequest, kv: torch.Tensor, found: PoolLookup) -> torch.Tensor:
        """Scores [c, T] float32 on the host of one request from its whole history's K/V, without graphs."""
        query = torch.tensor(req.query_ts, device=self._device)
        return self.model.rank_unchecked(kv, req.hist_ts.to(self._device), found.cand_emb, query).float().cpu()

    def _suffix_kv(self, found: PoolLookup, hist_ts: torch.Tensor, new_actions: torch.Tensor) -> torch.Tensor:
        """K/V of the history past the reused prefix (all of it at a miss) from a copied prefix:
        a prefill from its CUDA graph where graphs apply, the eager network otherwise."""
        graphs, reused, new = self._graphs, found.prefix_len, found.suffix_emb.shape[0]
        if reused == 0 and graphs is not None and new > 0:
            return graphs.prefill.prefill(found.suffix_emb, hist_ts, new_actions)
        prefix = found.prefix_kv if reused else self.model.empty_kv()
        return self.model.extend_suffix_unchecked(prefix, found.suffix_emb, hist_ts, new_actions)

    # -- background -----------------------------------------------------------------------------------
    def step_background(self, elapsed_s: float) -> None:
        """One round of background work as if `elapsed_s` passed: a bounded move step, then
        admission and refill within the bandwidth the throttle grants for that time.

        Only for a ranker built with `background_interval_s=None`; with a thread, the
        thread is the one caller (the throttle is not shared between threads)."""
        if self._worker is not None:
            raise RuntimeError("step_background: this ranker's background thread already does this work")
        self._background_round(elapsed_s)

    def _background_round(self, elapsed_s: float) -> None:
        with self._cuda_lock:
            self.pool.step_moves()
            budget = self._throttle.grant(elapsed_s)
            self._throttle.spend(self.pool.background_step(budget))

    @property
    def background_error(self) -> BaseException | None:
        """The exception that stopped the background thread, if one did."""
        return self._worker.error if self._worker is not None else None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> PooledRanker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
