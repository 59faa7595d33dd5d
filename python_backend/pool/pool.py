"""The pool: one allocation of `pool_bytes`, split by alpha between the two caches.

Everything that touches pool state goes through this class and its lock; the
ranker sees only `lookup` -> `PoolLookup` and `commit`, the controller only
`set_alpha` and `stats`. Copies are placed so that nothing but a request's own
missed rows ever sits on its critical path:

- `set_alpha` only records a target; `step_moves` (background) moves at most
  `max_move_pages_per_step` pages per call, evicting on the shrinking side
  (metadata only) and handing over free pages. A move copies nothing.
- `background_step` admits recently missed rows and refills free EMB slots
  with the hottest absent rows, within a byte budget the caller throttles;
  its H2D copy runs outside the lock.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from helmrec.pool.config import PoolConfig
from helmrec.pool.emb_cache import EmbCache
from helmrec.pool.host_table import HostTable
from helmrec.pool.kv_cache import HistoryTokens, KVCache, StoreItem
from helmrec.pool.pages import PageAllocator, Side
from helmrec.pool.stats import PoolStats, StatsRecorder

# Frequencies are halved after this many row lookups per slot of the whole
# pool: long enough that a row's count reflects many requests, short enough
# that a hot set that moved on stops defending its rows within a few windows.
_AGING_LOOKUPS_PER_SLOT = 8
# Missed ids wait for admission in a bounded queue; beyond this many per pool
# slot the oldest are forgotten (they come back on their next miss).
_ADMIT_QUEUE_PER_SLOT = 2


class LookupQuery(NamedTuple):
    """What the pool needs of one request to look it up (ids as CPU int64 tensors)."""

    user_id: int
    tokens: HistoryTokens
    hist_ids: torch.Tensor
    cand_ids: torch.Tensor


@dataclass(frozen=True)
class PoolLookup:
    """What a request gets from the pool: its reusable KV prefix and its embeddings.

    Every tensor is a fresh copy on the pool's device; none aliases pool
    pages, so later evictions cannot change what the request computes with.
    An in-place lookup instead names the prefix's pages (`prefix_pages`), which
    stay pinned, and so unchanged, until the caller unpins the user.
    """

    prefix_len: int
    prefix_kv: torch.Tensor | None  # [L, prefix_len, W]; None when prefix_len == 0 or read in place
    suffix_emb: torch.Tensor  # [n - prefix_len, D] rows of the history not covered by the prefix
    cand_emb: torch.Tensor  # [c, D]
    miss_ids: np.ndarray  # ids gathered from the host table (queued for admission at commit)
    # Would the KV prefix have been reused with PoolConfig.counterfactual_share of the pool more / less for KV?
    kv_hit_more: bool
    kv_hit_less: bool
    prefix_pages: tuple[int, ...] = ()  # in place: the reused prefix's pages, in token order (pinned)


class Pool:
    def __init__(self, config: PoolConfig, host_table: HostTable, kv_layers: int, kv_width: int, kv_dtype: torch.dtype) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.host_table = host_table
        self.num_pages = config.num_pages
        page_bytes = config.page_bytes

        row_bytes = host_table.row_bytes
        rows_per_page = page_bytes // row_bytes
        if rows_per_page < 1:
            raise ValueError(f"page_bytes ({page_bytes}) is smaller than one embedding row ({row_bytes} bytes)")
        token_bytes = kv_layers * kv_width * torch.empty(0, dtype=kv_dtype).element_size()
        tokens_per_page = page_bytes // token_bytes
        if tokens_per_page < 1:
            raise ValueError(
                f"page_bytes ({page_bytes}) is smaller than one KV token of all {kv_layers} layers ({token_bytes} bytes)"
            )

        # THE allocation. Both caches are strided views of it; nothing else holds pool memory.
        self.storage = torch.zeros(config.pool_bytes, dtype=torch.uint8, device=self.device)
        paged = self.storage[: self.num_pages * page_bytes]
        emb_flat = paged.view(host_table.dtype)
        emb_page_elems = page_bytes // host_table.table.element_size()
        emb_rows = emb_flat.as_strided((self.num_pages, rows_per_page, host_table.width), (emb_page_elems, host_table.width, 1))
        kv_flat = paged.view(kv_dtype)
        kv_page_elems = page_bytes // kv_flat.element_size()
        kv_pages = kv_flat.as_strided(
            (self.num_pages, kv_layers, tokens_per_page, kv_width),
            (kv_page_elems, tokens_per_page * kv_width, kv_width, 1),
        )

        emb_pages = _pages_for(config.alpha, self.num_pages)
        self._alloc = PageAllocator(self.num_pages, emb_pages)
        num_slots = self.num_pages * rows_per_page
        self.emb_cache = EmbCache(self._alloc, emb_rows, host_table.num_items, aging_lookups=_AGING_LOOKUPS_PER_SLOT * num_slots)
        self.kv_cache = KVCache(self._alloc, kv_pages, ghost_pages=max(1, round(config.counterfactual_share * self.num_pages)))
        self._target_emb_pages = emb_pages
        self._admit_queue: deque[int] = deque(maxlen=_ADMIT_QUEUE_PER_SLOT * num_slots)
        self._stats = StatsRecorder()
        self.lock = threading.Lock()

    # -- geometry --------------------------------------------------------------------------------
    @property
    def rows_per_page(self) -> int:
        return self.emb_cache.rows_per_page

    @property
    def tokens_per_page(self) -> int:
        return self.kv_cache.tokens_per_page

    # -- alpha -----------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The split in effect now: EMB pages / all pages (lags `target_alpha` while a move runs)."""
        return self._alloc.pages(Side.EMB) / self.num_pages

    @property
    def target_alpha(self) -> float:
        return self._target_emb_pages / self.num_pages

    def set_alpha(self, alpha: float) -> None:
        """Record the split to move toward; `step_moves` does the moving, off the request path."""
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        with self.lock:
            self._target_emb_pages = _pages_for(alpha, self.num_pages)

    def step_moves(self) -> int:
        """Move at most `max_move_pages_per_step` pages toward the target; returns pages moved."""
        with self.lock:
            gap = self._target_emb_pages - self._alloc.pages(Side.EMB)
            if gap == 0:
                return 0
            count = min(abs(gap), self.config.max_move_pages_per_step)
            if gap > 0:  # KV shrinks: evict LRU users until enough KV pages are free
                src = Side.KV
                self._stats.kv_evictions += self.kv_cache.release_pages(count)
            else:  # EMB shrinks: free whole pages, cheapest rows first
                src = Side.EMB
                short = count - self._alloc.free_count(Side.EMB)
                if short > 0:
                    self._stats.emb_evictions += self.emb_cache.release_pages(short)[1]
            return self._alloc.transfer_free(src, count)

    # -- request path ------------------------------------------------------------------------------
    def lookup(self, user_id: int, tokens: HistoryTokens, hist_ids: torch.Tensor, cand_ids: torch.Tensor) -> PoolLookup:
        """`lookup_many` of one request."""
        return self.lookup_many([LookupQuery(user_id, tokens, hist_ids, cand_ids)])[0]

    def lookup_many(self, queries: Sequence[LookupQuery], *, in_place: bool = False) -> list[PoolLookup]:
        """KV prefix match of each request, then one EMB lookup of every uncovered history
        suffix and candidate of the group.

        `in_place`: the caller reads reused prefixes from the pages themselves, so none is
        copied out (prefix_kv is None; prefix_pages is the block table) and every user with a
        reused prefix is pinned until `unpin`.

        One lock pass and one host gather serve the whole group: per request, the
        Python of a lookup cost ~0.6 ms on the GPU host, most of it fixed costs of
        small numpy/torch calls that a group pays once. Hits are copied out of the pool
        under the lock; misses are gathered from the host table after it is released
        (the only critical-path H2D copy). A user must not appear twice in one group:
        its second request would not see the first one's commit.
        """
        with self.lock:
            matches = [self.kv_cache.match(q.user_id, q.tokens) for q in queries]
            parts = [
                np.concatenate([q.hist_ids.cpu().numpy()[m.length :], q.cand_ids.cpu().numpy()]) for q, m in zip(queries, matches)
            ]
            need = np.concatenate(parts)
            slots = self.emb_cache.lookup(need)
            hit = slots >= 0
            hit_rows = self.emb_cache.gather(slots[hit])
            pages: list[tuple[int, ...]] = [()] * len(queries)
            reused = [q.user_id for q, m in zip(queries, matches) if m.length] if in_place else []
            if in_place:
                self.kv_cache.pin(reused)
                pages = [tuple(self.kv_cache.pages_of(q.user_id)) if m.length else () for q, m in zip(queries, matches)]
            wanted = [] if in_place else [(q.user_id, m.length) for q, m in zip(queries, matches) if m.length]
            prefix_reads = iter(self.kv_cache.read_many(wanted) if wanted else [])
            prefix_kvs = [next(prefix_reads) if m.length and not in_place else None for m in matches]
            self._stats.emb_lookups += need.size
            self._stats.emb_hits += int(hit.sum())
            miss_ids = need[~hit]
            self._stats.h2d_critical_bytes += miss_ids.size * self.host_table.row_bytes
        try:
            emb = self._rows(need.size, hit, hit_rows, miss_ids)
        except BaseException:
            self.unpin(reused)  # the caller never gets the lookups it would unpin (e.g. out of device memory)
            raise
        out, offset, miss_offset = [], 0, 0
        misses_before = np.concatenate([[0], np.cumsum(~hit)])
        for q, m, part, prefix_kv, prefix_pages in zip(queries, matches, parts, prefix_kvs, pages):
            suffix = q.hist_ids.numel() - m.length
            end, miss_end = offset + part.size, int(misses_before[offset + part.size])
            out.append(
                PoolLookup(
                    prefix_len=m.length,
                    prefix_kv=prefix_kv,
                    suffix_emb=emb[offset : offset + suffix],
                    cand_emb=emb[offset + suffix : end],
                    miss_ids=miss_ids[miss_offset:miss_end],
                    kv_hit_more=m.hit_more,
                    kv_hit_less=m.hit_less,
                    prefix_pages=prefix_pages,
                )
            )
            offset, miss_offset = end, miss_end
        return out

    def _rows(self, count: int, hit: np.ndarray, hit_rows: torch.Tensor, miss_ids: np.ndarray) -> torch.Tensor:
        """The group's `count` embedding rows in order: the cache's hits with the host table's misses."""
        if miss_ids.size == 0:  # the steady state of hot users: no copy, no scatter
            return hit_rows
        miss_rows = self.host_table.fetch_critical(torch.from_numpy(miss_ids)).wait()
        if miss_ids.size == count:
            return miss_rows
        # Index lists, not a boolean mask: masked assignment would stall on a device sync.
        emb = torch.empty(count, self.host_table.width, dtype=self.host_table.dtype, device=self.device)
        emb.index_copy_(0, torch.from_numpy(np.flatnonzero(hit)).to(self.device), hit_rows)
        emb.index_copy_(0, torch.from_numpy(np.flatnonzero(~hit)).to(self.device), miss_rows)
        return emb

    def commit(self, user_id: int, tokens: HistoryTokens, lookup: PoolLookup, kv: torch.Tensor) -> None:
        """`commit_many` of one request."""
        self.commit_many([(user_id, tokens, lookup, kv)])

    def commit_many(
        self, done: Sequence[tuple[int, HistoryTokens, PoolLookup, torch.Tensor]], *, in_place: bool = False
    ) -> list[list[int] | None]:
        """Store each request's KV, queue its missed rows for admission, count it: the whole
        group under one lock pass.

        Each kv is the whole history's [L, n, W]; with `in_place` (after `lookup_many(...,
        in_place=True)`) it is only the part past the reused prefix, [L, n - prefix_len, W],
        and each user whose entry now holds its whole history is pinned and gets its block
        table back (None: not cached, e.g. no room), to be ranked from the pages and then
        `unpin`ned. Without `in_place`, every entry is None."""
        tables: list[list[int] | None] = []
        with self.lock:
            stats = self._stats
            items = [StoreItem(u, kv, f.prefix_len, t, f.prefix_len if in_place else 0) for u, t, f, kv in done]
            stats.kv_evictions += self.kv_cache.store_many(items)
            for user_id, tokens, lookup, _ in done:
                held = in_place and tokens.length > 0 and self.kv_cache.cached_length(user_id) == tokens.length
                if held:
                    self.kv_cache.pin([user_id])
                tables.append(list(self.kv_cache.pages_of(user_id)) if held else None)
                self._admit_queue.extend(lookup.miss_ids.tolist())
                stats.record_request(user_id, tokens.length)
                stats.kv_requests += 1
                stats.kv_tokens += tokens.length
                stats.kv_hit_tokens += lookup.prefix_len
                stats.kv_hits_more += lookup.kv_hit_more
                stats.kv_hits_less += lookup.kv_hit_less
                if lookup.prefix_len:
                    stats.kv_hits += 1
                    stats.kv_partial_hits += int(lookup.prefix_len < tokens.length)
        return tables

    def read_prefix(self, lookup: PoolLookup) -> torch.Tensor:
        """A copy [L, prefix_len, W] of the pinned prefix an in-place lookup found (for a request
        whose new K/V could not be cached and so ranks from a whole-history tensor)."""
        with self.lock:
            return self.kv_cache.read_pages(lookup.prefix_pages, lookup.prefix_len)

    def unpin(self, users: Sequence[int]) -> None:
        """Release the pins of `lookup_many` / `commit_many(in_place=True)` once the pages were read."""
        with self.lock:
            self.kv_cache.unpin(users)

    # -- background ----------------------------------------------------------------------------------
    def background_step(self, budget_bytes: int) -> int:
        """Admit queued misses, then refill free EMB slots, copying at most `budget_bytes`.

        Returns the bytes copied. Slots are reserved under the lock, filled by a
        background-stream copy outside it, and published under it again.
        """
        rows_budget = budget_bytes // self.host_table.row_bytes
        if rows_budget <= 0:
            return 0
        with self.lock:
            queued = np.fromiter(self._admit_queue, dtype=np.int64, count=len(self._admit_queue))
            self._admit_queue.clear()
            admitted, evicted = self.emb_cache.reserve(queued, rows_budget, evict=True)
            self._stats.emb_evictions += evicted
            room = min(rows_budget - admitted.size, self.emb_cache.free_slots())
        # The refill scan reads the whole frequency table; it runs unlocked (see refill_candidates).
        refill = self.emb_cache.refill_candidates(room)
        with self.lock:
            refilled, _ = self.emb_cache.reserve(refill, rows_budget - admitted.size, evict=False)
            items = np.concatenate([admitted.items, refilled.items])
            self._stats.h2d_background_bytes += items.size * self.host_table.row_bytes
        if items.size == 0:
            return 0
        try:
            rows = self.host_table.fetch_background(torch.from_numpy(items))
        except BaseException as exc:
            with self.lock:
                self.emb_cache.cancel(admitted)
                self.emb_cache.cancel(refilled)
                self._stats.h2d_background_bytes -= items.size * self.host_table.row_bytes
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                # Requests hold the device memory cap for now: this round copies nothing (its admitted
                # misses are forgotten until they miss again) and a later round refills. Raising would
                # stop the background thread, and with it the node.
                return 0
            raise
        with self.lock:
            self.emb_cache.publish(admitted, rows[: admitted.size])
            self.emb_cache.publish(refilled, rows[admitted.size :])
        return items.size * self.host_table.row_bytes

    # -- observability ---------------------------------------------------------------------------------
    def stats(self) -> PoolStats:
        with self.lock:
            return self._stats.snapshot(
                emb_pages=self._alloc.pages(Side.EMB),
                kv_pages=self._alloc.pages(Side.KV),
                kv_cached_users=self.kv_cache.cached_users,
                alpha=self.alpha,
                target_alpha=self.target_alpha,
            )

    def bytes_in_use(self) -> int:
        return self._alloc.used_pages() * self.config.page_bytes

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant of the pool."""
        with self.lock:
            if self.storage.numel() != self.config.pool_bytes:
                raise AssertionError("the pool allocation changed size")
            if self.bytes_in_use() > self.config.pool_bytes:
                raise AssertionError(f"{self.bytes_in_use()} bytes in use exceed pool_bytes {self.config.pool_bytes}")
            self._alloc.check()
            self.emb_cache.check()
            self.kv_cache.check()


def _pages_for(alpha: float, num_pages: int) -> int:
    return int(round(alpha * num_pages))
