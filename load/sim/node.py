"""One simulated serving node: its pool (EMB + KV under one page budget), its FIFO queue, its window stats.

Pool model (the real pool's policies, replayed over ids instead of tensors):

- KV: exactly `helmrec.pool.kv_cache.KVCache`'s policy, by replay of every
  request: one entry per user holding its last history length in
  ceil(len / tokens_per_page) pages; a request reuses the entry when it is a
  prefix of its history (trace histories only grow, so a resident entry always
  is) and prefills only the suffix; the entry is then extended in place, LRU
  users are evicted to make room (never the requester), and a prefix that does
  not fit even in an empty KV side is not cached. Shrinking the KV side evicts
  LRU users until the held pages fit. The real cache's `KVGhost` mirrors the
  LRU order, so each request also says whether it would have hit with
  COUNTERFACTUAL_SHARE of the pool more or less for KV.
  The real classes are not reused because they store K/V in torch pages and
  hash every history token: 32 nodes x 4 GB of page storage and a digest per
  request token do not fit a CPU simulation of millions of requests.
- EMB: `EmbCache` keeps the most frequent rows (LFU, recency breaks ties),
  admits misses and refills the hottest absent rows in the background under a
  bandwidth cap, and a shrinking EMB side drops its least valuable pages. Under
  the traces' stationary Zipf item law that policy holds the top-`rows`
  popularity ranks, so the cache is modelled by its resident row count: a
  lookup hits with probability CDF_zipf(rows), rows counted in whole pages
  as the pool allocates them; growing alpha adds rows only as
  fast as `refill_bytes_per_s` allows; shrinking it evicts the coldest rows at
  once. Per-item replay is out of reach here (512 candidates x 54k requests/s
  is 28M row lookups per simulated second).

Service time per request comes from `helmrec.allocator.cost_model.CostModel` (the
constants and their sources live there), queueing from a FIFO single server:
start = max(arrival, previous completion).

Grouped execution: `hstu_pool` takes every waiting request into one group (up to
`GROUP_MAX`) and a request in a group of g costs `CostModel.batch_factor(kind, g)`
times its cost alone (measured per kind by `helmrec calibrate`; 1.0 where no
curve was measured, i.e. one request at a time). The FIFO server charges each
request the factor of the group it would join: itself plus the requests
waiting when it arrives. That keeps one event per request; it charges the
queue's head a little more and its tail a little less than the group's
common replay would.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from helmrec.allocator.observation import COUNTERFACTUAL_SHARE, KVLookback, Observation
from helmrec.load.sim.config import GROUP_MAX, SimConfig
from helmrec.pool.kv_ghost import KVGhost
from helmrec.workload.zipf import ZipfLaw


class NodePool:
    """Page accounting of one node's pool and the hit outcome of each request."""

    def __init__(self, config: SimConfig, items: ZipfLaw, alpha: float) -> None:
        cost = config.node.cost
        self.total_pages = config.total_pages
        self.rows_per_page = config.page_bytes // cost.emb_row_bytes
        self.tokens_per_page = config.page_bytes // cost.kv_token_bytes
        self._refill_rows_per_s = config.refill_bytes_per_s / cost.emb_row_bytes
        # Row hit probability by whole EMB pages (the pool fills and evicts the EMB side a page at a
        # time): one array read per refill step instead of a CDF evaluation per request.
        self._hit_by_page = np.asarray(items.cdf_at(np.arange(self.total_pages + 1) * self.rows_per_page), dtype=np.float64)
        self._entries: OrderedDict[int, tuple[int, int]] = OrderedDict()  # user -> (tokens, pages), LRU first
        self._ghost: KVGhost[int] = KVGhost(max(1, round(COUNTERFACTUAL_SHARE * self.total_pages)))  # entry: tokens
        self.kv_pages_used = 0
        self.emb_rows = 0.0  # resident rows (the hottest ranks)
        self.emb_hit_prob = 0.0
        self._filled_at = 0.0  # time emb_rows was last brought up to date
        self.kv_evictions_total = 0
        self.emb_evictions_total = 0
        self.alpha = 0.0
        self.emb_pages = 0
        self.kv_pages = self.total_pages
        self.set_alpha(alpha, 0.0)

    @property
    def cached_users(self) -> int:
        return len(self._entries)

    def set_alpha(self, alpha: float, now: float) -> None:
        """Move the split: the shrinking side evicts now, the growing side fills lazily (KV) or by refill (EMB)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self._refill(now)
        self.alpha = alpha
        self.emb_pages = int(round(alpha * self.total_pages))
        self.kv_pages = self.total_pages - self.emb_pages
        cap = self.emb_pages * self.rows_per_page
        if self.emb_rows > cap:
            self.emb_evictions_total += int(self.emb_rows - cap)
            self.emb_rows = float(cap)
            self._update_hit_prob()
        while self.kv_pages_used > self.kv_pages and self._entries:
            self._drop_oldest()

    def kv_serve(self, user: int, history_len: int) -> tuple[int, bool, bool]:
        """(tokens reused from this user's cached prefix, would hit with COUNTERFACTUAL_SHARE more KV,
        with that much less); stores the new prefix."""
        entry = self._entries.get(user)
        reused, have = 0, 0
        if entry is not None:
            if 0 < entry[0] <= history_len:
                reused, have = entry
                more, less = True, not self._ghost.in_bottom(user, self.kv_pages - self.kv_pages_used)
                self._entries.move_to_end(user)
                self._ghost.touched(user, have)
            else:
                more = less = False
                self.kv_pages_used -= entry[1]
                del self._entries[user]
                self._ghost.forgotten(user)
        else:
            ghost = self._ghost.ghost(user)
            more, less = ghost is not None and 0 < ghost <= history_len, False
        if history_len == 0:
            return reused, more, less
        if entry is None:
            self._ghost.forgotten(user)  # before the evictions below (see KVGhost.forgotten)
        need = -(-history_len // self.tokens_per_page) - have
        keep = 1 if have else 0  # the requester's own entry sits at the MRU end; never evict it
        while self.kv_pages - self.kv_pages_used < need and len(self._entries) > keep:
            self._drop_oldest()
        if self.kv_pages - self.kv_pages_used < need:
            return reused, more, less  # does not fit even alone: the old prefix (if any) stays, the new one is not cached
        self.kv_pages_used += need
        self._entries[user] = (history_len, have + need)
        self._ghost.touched(user, have + need)
        return reused, more, less

    def emb_hit_prob_at(self, now: float) -> float:
        """Probability that a row lookup hits at time `now` (after the refill up to then)."""
        if self.emb_rows < self.emb_pages * self.rows_per_page:
            self._refill(now)
        return self.emb_hit_prob

    def _refill(self, now: float) -> None:
        cap = self.emb_pages * self.rows_per_page
        if now > self._filled_at and self.emb_rows < cap:
            self.emb_rows = min(float(cap), self.emb_rows + (now - self._filled_at) * self._refill_rows_per_s)
            self._update_hit_prob()
        self._filled_at = max(self._filled_at, now)

    def _update_hit_prob(self) -> None:
        self.emb_hit_prob = float(self._hit_by_page[int(self.emb_rows) // self.rows_per_page])

    def _drop_oldest(self) -> None:
        user, (tokens, pages) = self._entries.popitem(last=False)
        self.kv_pages_used -= pages
        self.kv_evictions_total += 1
        self._ghost.evicted(user, pages, tokens)


class WindowStats:
    """What one node saw in the current control window (read and reset by `observation`)."""

    def __init__(self) -> None:
        self.requests = 0
        self.kv_hits = 0
        self.kv_hits_more = 0
        self.kv_hits_less = 0
        self.emb_lookups = 0.0
        self.emb_hits = 0.0
        self.history_tokens = 0
        self.hot = 0
        self.latency_ms: list[float] = []
        self.users: set[int] = set()


class SimNode:
    """A node: pool + FIFO server + the window stats its controller observes."""

    def __init__(self, config: SimConfig, items: ZipfLaw, candidates: int, alpha: float) -> None:
        self.config = config
        self.cost = config.node.cost
        self.candidates = candidates
        self.pool = NodePool(config, items, alpha)
        # batch_factor by group size, read once per request while a queue stands (interpolating per
        # request cost as much as the rest of serve).
        self._batch_factor = {
            kind: [1.0, *(float(self.cost.batch_factor(kind, g)) for g in range(1, GROUP_MAX + 1))]
            for kind in ("hit", "extend", "prefill")
        }
        self.free_at = 0.0  # when the server finishes everything admitted so far
        self._starts: deque[float] = deque()  # start times of admitted requests not yet started
        self.window = WindowStats()
        self._kv_lookback = KVLookback()

    def serve(self, now: float, user: int, history_len: int) -> tuple[float, bool, int, float]:
        """Admit a request arriving at `now`: (completion time, KV hit, EMB row lookups, row hit probability)."""
        reused, more, less = self.pool.kv_serve(user, history_len)
        computed = history_len - reused
        hit_p = self.pool.emb_hit_prob_at(now)
        lookups = computed + self.candidates
        service_us = float(
            self.cost.service_us(computed, history_len, self.candidates, lookups * (1.0 - hit_p), lookups * hit_p)
        )
        start = now if now > self.free_at else self.free_at
        if start > now:  # joins the group of the requests waiting now
            kind = "hit" if computed == 0 else "extend" if reused else "prefill"
            service_us *= self._batch_factor[kind][min(1 + self.waiting(now), GROUP_MAX)]
        done = start + service_us * 1e-6
        self.free_at = done
        if start > now:
            self._starts.append(start)
        w = self.window
        w.requests += 1
        w.kv_hits += reused > 0
        w.kv_hits_more += more
        w.kv_hits_less += less
        w.emb_lookups += lookups
        w.emb_hits += lookups * hit_p
        w.history_tokens += history_len
        if user in w.users:
            w.hot += 1
        else:
            w.users.add(user)
        w.latency_ms.append((done - now) * 1e3)
        return done, reused > 0, lookups, hit_p

    def waiting(self, now: float) -> int:
        """Requests admitted but not yet started at `now` (Triton's pending-request gauge)."""
        starts = self._starts
        while starts and starts[0] <= now:
            starts.popleft()
        return len(starts)

    def observation(self, now: float, interval_s: float) -> Observation:
        """The Observation of the window that closes at `now` (contract definitions: the KV hit rates
        over the trailing lookback), then reset the window."""
        w = self.window
        n = w.requests
        kv_hit, kv_more, kv_less = self._kv_lookback.add(interval_s, n, w.kv_hits, w.kv_hits_more, w.kv_hits_less)
        obs = Observation(
            emb_hit_rate=min(1.0, w.emb_hits / w.emb_lookups) if w.emb_lookups else 0.0,
            kv_hit_rate=kv_hit,
            hot_user_share=w.hot / n if n else 0.0,
            mean_history_len=w.history_tokens / n if n else 0.0,
            request_rate=n / interval_s,
            queue_depth=float(self.waiting(now)),
            alpha=self.pool.alpha,
            p99_ms=float(np.percentile(w.latency_ms, 99)) if n else 0.0,
            kv_hit_rate_more=kv_more,
            kv_hit_rate_less=kv_less,
        )
        self.window = WindowStats()
        return obs
