"""Read-and-reset statistics of the pool: the only thing the controller sees of it.

Like vLLM's `make_prefix_cache_stats`, counters accumulate in one recorder and
one call turns them into an immutable snapshot and starts a new window, so the
controller's observation covers exactly one control interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStats:
    """Counts over the window since the previous `stats()` call.

    A KV hit is a request whose cached user prefix was reused, fully or in
    part (`kv_partial_hits` counts the partial ones among `kv_hits`).
    `kv_hits_more` / `kv_hits_less` count the requests that would have been KV
    hits with `PoolConfig.counterfactual_share` of the pool more / less for KV (`KVGhost`).
    EMB evictions count rows; KV evictions count user prefixes. Page counts,
    cached users and alpha are the values when the window closed.
    """

    window_s: float
    requests: int
    history_len_sum: int
    hot_user_requests: int
    emb_lookups: int
    emb_hits: int
    kv_requests: int
    kv_hits: int
    kv_partial_hits: int
    kv_hits_more: int
    kv_hits_less: int
    kv_tokens: int
    kv_hit_tokens: int
    emb_evictions: int
    kv_evictions: int
    emb_pages: int
    kv_pages: int
    kv_cached_users: int
    h2d_critical_bytes: int
    h2d_background_bytes: int
    alpha: float
    target_alpha: float

    @property
    def emb_hit_rate(self) -> float:
        return self.emb_hits / self.emb_lookups if self.emb_lookups else 0.0

    @property
    def kv_hit_rate(self) -> float:
        return self.kv_hits / self.kv_requests if self.kv_requests else 0.0

    @property
    def kv_token_hit_rate(self) -> float:
        return self.kv_hit_tokens / self.kv_tokens if self.kv_tokens else 0.0

    @property
    def hot_user_share(self) -> float:
        return self.hot_user_requests / self.requests if self.requests else 0.0

    @property
    def mean_history_len(self) -> float:
        return self.history_len_sum / self.requests if self.requests else 0.0

    @property
    def request_rate(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0


class StatsRecorder:
    """Mutable counters behind `PoolStats`; the pool updates them under its lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self.window_start = self._clock()
        self.requests = 0
        self.history_len_sum = 0
        self.hot_user_requests = 0
        self.emb_lookups = 0
        self.emb_hits = 0
        self.kv_requests = 0
        self.kv_hits = 0
        self.kv_partial_hits = 0
        self.kv_hits_more = 0
        self.kv_hits_less = 0
        self.kv_tokens = 0
        self.kv_hit_tokens = 0
        self.emb_evictions = 0
        self.kv_evictions = 0
        self.h2d_critical_bytes = 0
        self.h2d_background_bytes = 0
        self.window_users: set[int] = set()

    def record_request(self, user_id: int, history_len: int) -> None:
        """A request is 'hot' if its user already sent one earlier in this window."""
        self.requests += 1
        self.history_len_sum += history_len
        if user_id in self.window_users:
            self.hot_user_requests += 1
        else:
            self.window_users.add(user_id)

    def snapshot(
        self, emb_pages: int, kv_pages: int, kv_cached_users: int, alpha: float, target_alpha: float
    ) -> PoolStats:
        """Freeze the window into a `PoolStats` and start the next window."""
        stats = PoolStats(
            window_s=self._clock() - self.window_start,
            requests=self.requests,
            history_len_sum=self.history_len_sum,
            hot_user_requests=self.hot_user_requests,
            emb_lookups=self.emb_lookups,
            emb_hits=self.emb_hits,
            kv_requests=self.kv_requests,
            kv_hits=self.kv_hits,
            kv_partial_hits=self.kv_partial_hits,
            kv_hits_more=self.kv_hits_more,
            kv_hits_less=self.kv_hits_less,
            kv_tokens=self.kv_tokens,
            kv_hit_tokens=self.kv_hit_tokens,
            emb_evictions=self.emb_evictions,
            kv_evictions=self.kv_evictions,
            emb_pages=emb_pages,
            kv_pages=kv_pages,
            kv_cached_users=kv_cached_users,
            h2d_critical_bytes=self.h2d_critical_bytes,
            h2d_background_bytes=self.h2d_background_bytes,
            alpha=alpha,
            target_alpha=target_alpha,
        )
        self._reset()
        return stats
