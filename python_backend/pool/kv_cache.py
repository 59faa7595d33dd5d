"""KV cache: per-user prefix K/V of every layer in KV pages, LRU over users.

Paged like vLLM: a user's prefix of n tokens occupies ceil(n / tokens_per_page)
pages listed in its block table, each page laid out [L, tokens_per_page, W].
A cached prefix is reused only if it is a prefix of the request's history:
same length-n token prefix, checked by comparing the (item id, timestamp,
action) bytes of every position with those stored with the entry (24 bytes a
token on the host next to ~10 KiB of K/V on the device for `large`), so a
changed action or timestamp anywhere in the prefix is a miss, never a wrong answer.

A `KVGhost` mirrors the LRU order so that every request also tells whether it
would have hit with `ghost_pages` more or fewer KV pages (`KVMatch`):
the controller's measured view of the neighbouring splits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from helmrec.fastpath.cuda_graphs import to_device
from helmrec.pool.kv_ghost import KVGhost
from helmrec.pool.pages import PageAllocator, Side

_TOKEN_BYTES = 3 * 8  # (item id, timestamp, action) as int64


class HistoryTokens:
    """A request's history as bytes, position-major, so a token prefix is a byte prefix.

    A cached prefix is checked by comparing these bytes with the ones stored with
    it: exact, and at request sizes cheaper than hashing them (copy-and-compare of
    a 4096-token prefix, 96 KiB, takes ~2 us here; a blake2b of it ~70 us).
    """

    def __init__(self, ids: torch.Tensor, ts: torch.Tensor, actions: torch.Tensor) -> None:
        # numpy, not torch: on the GPU host each small torch op costs ~10 us, and a group pays this per request.
        packed = np.stack([_host_int64(ids), _host_int64(ts), _host_int64(actions)], axis=1)
        self._bytes = packed.tobytes()
        self.length = ids.numel()

    def prefix(self, length: int) -> bytes:
        """The bytes of the first `length` tokens (the length is part of them through their count)."""
        return self._bytes[: length * _TOKEN_BYTES]


@dataclass
class KVEntry:
    length: int
    tokens: bytes  # HistoryTokens.prefix(length) of the request that stored it
    pages: list[int]


class StoreItem(NamedTuple):
    """One request's `KVCache.store`: its K/V of history tokens [kv_start, kv_start + m), the
    prefix it reused, and its whole history's tokens."""

    user_id: int
    kv: torch.Tensor
    reused: int
    tokens: HistoryTokens
    kv_start: int = 0


class KVMatch(NamedTuple):
    """What `KVCache.match` found for a request, and what the neighbouring KV sizes would have."""

    length: int  # tokens of the cached prefix the request reuses (0: a miss)
    hit_more: bool  # a cache `ghost_pages` larger would have had a reusable prefix
    hit_less: bool  # a cache `ghost_pages` smaller would have had it


class KVCache:
    def __init__(self, allocator: PageAllocator, pages: torch.Tensor, ghost_pages: int) -> None:
        """`pages` is the pool viewed as [num_pages, L, tokens_per_page, W] (a strided view, no copy);
        `ghost_pages` is the capacity difference `match` also answers for."""
        self._alloc = allocator
        self._pages = pages
        self.tokens_per_page = pages.shape[2]
        self._entries: OrderedDict[int, KVEntry] = OrderedDict()
        self._ghost: KVGhost[KVEntry] = KVGhost(ghost_pages)
        # Users whose pages a rank step reads in place: never evicted until unpinned (counts, not a set,
        # so nested pins of one user stay correct).
        self._pins: dict[int, int] = {}

    @property
    def pages(self) -> torch.Tensor:
        """The pool's KV view [num_pages, L, tokens_per_page, W]: what in-place rank graphs read."""
        return self._pages

    @property
    def cached_users(self) -> int:
        return len(self._entries)

    def match(self, user_id: int, tokens: HistoryTokens) -> KVMatch:
        """This user's reusable cached prefix, and whether a cache `ghost_pages` larger / smaller would have one.

        A reusable entry becomes the most recently used; nothing else changes.
        """
        entry = self._entries.get(user_id)
        if entry is None:
            ghost = self._ghost.ghost(user_id)
            return KVMatch(0, ghost is not None and _reusable(ghost, tokens), False)
        if not _reusable(entry, tokens):
            return KVMatch(0, False, False)
        in_bottom = self._ghost.in_bottom(user_id, self._alloc.free_count(Side.KV))
        self._entries.move_to_end(user_id)
        self._ghost.touched(user_id, len(entry.pages))
        return KVMatch(entry.length, True, not in_bottom)

    def read(self, user_id: int, length: int) -> torch.Tensor:
        """Copy the first `length` cached tokens out of the pool as [L, length, W]."""
        return self.read_many([(user_id, length)])[0]

    def read_many(self, wanted: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """`read` of several (user, length) prefixes: one block table and one gather for all of them."""
        return self._gather([(self._entries[user].pages, length) for user, length in wanted])

    def read_pages(self, pages: Sequence[int], length: int) -> torch.Tensor:
        """Copy the first `length` tokens held by `pages` (a block table, token order) as [L, length, W]."""
        return self._gather([(pages, length)])[0]

    def _gather(self, wanted: Sequence[tuple[Sequence[int], int]]) -> list[torch.Tensor]:
        tpp = self.tokens_per_page
        blocks = [-(-length // tpp) for _, length in wanted]
        pages = [page for (table, _), b in zip(wanted, blocks) for page in table[:b]]
        gathered = self._pages[torch.tensor(pages, dtype=torch.int64, device=self._pages.device)]  # [sum blocks, L, tpp, W]
        layers, width = gathered.shape[1], gathered.shape[3]
        out, start = [], 0
        for (_, length), b in zip(wanted, blocks):
            mine = gathered[start : start + b].permute(1, 0, 2, 3).reshape(layers, b * tpp, width)
            out.append(mine[:, :length])
            start += b
        return out

    def pin(self, users: Sequence[int]) -> None:
        """Keep these users' pages where they are (no eviction) until `unpin`: a rank step reads them in place."""
        for user in users:
            self._pins[user] = self._pins.get(user, 0) + 1

    def unpin(self, users: Sequence[int]) -> None:
        for user in users:
            left = self._pins[user] - 1
            if left:
                self._pins[user] = left
            else:
                del self._pins[user]

    @property
    def pinned_users(self) -> int:
        """Users whose pages are pinned now (0 between groups: a pin outliving its group is a leak)."""
        return len(self._pins)

    def pages_of(self, user_id: int) -> list[int]:
        """The user's block table: its pages, in token order."""
        return self._entries[user_id].pages

    def store(self, user_id: int, kv: torch.Tensor, reused: int, tokens: HistoryTokens, kv_start: int = 0) -> int:
        """Cache `kv` [L, m, W], the K/V of history tokens [kv_start, kv_start + m), so that this
        user's entry holds the first kv_start + m tokens; returns how many other users were evicted.

        When the entry still holds the prefix this request reused, only the new
        suffix is written (into the last page's spare tokens, then new pages);
        otherwise (first request, history rewritten, or the entry was evicted
        meanwhile) the entry is rebuilt, which needs the whole history (kv_start 0).
        If even evicting every other unpinned user leaves too few pages, the old
        entry is kept when still valid and the new prefix is simply not cached.
        """
        return self.store_many([StoreItem(user_id, kv, reused, tokens, kv_start)])

    def store_many(self, items: Sequence[StoreItem]) -> int:
        """`store` of a group (one user at most once), with one scatter for all their new tokens:
        per request, a write cost ~6 small device ops (index tensors, a copy to the device, the
        scatter), which a group of returning users paid per member. Users stored earlier in the
        group are pinned until the write, so a later one's eviction cannot take their pages."""
        evicted, held, writes = 0, [], []
        try:
            for item in items:
                count, write = self._place(item)
                evicted += count
                if write is not None:
                    writes.append(write)
                    self.pin([item.user_id])
                    held.append(item.user_id)
        finally:
            self.unpin(held)
        if writes:
            try:
                self._write(writes)
            except BaseException:
                # The entries already claim these tokens; their K/V may not be in the pages (e.g. the
                # device ran out of memory for the scatter). A later match would reuse garbage: drop them.
                for user_id in held:
                    self._drop(user_id, evicted=False)
                raise
        return evicted

    def _write(self, writes: Sequence[tuple[np.ndarray, np.ndarray, torch.Tensor]]) -> None:
        """One scatter of every (entry pages, token positions, K/V) into the pool's pages."""
        tpp = self.tokens_per_page
        index = np.concatenate([np.stack([pages[pos // tpp], pos % tpp]) for pages, pos, _ in writes], axis=1)
        page_index, slot_index = to_device(index, self._pages.device)
        new = torch.cat([kv for _, _, kv in writes], dim=1) if len(writes) > 1 else writes[0][2]
        self._pages[page_index, :, slot_index] = new.permute(1, 0, 2).to(self._pages.dtype)

    def _place(self, item: StoreItem) -> tuple[int, tuple[np.ndarray, np.ndarray, torch.Tensor] | None]:
        """`store`'s bookkeeping for one user: (users evicted, what to write: the entry's pages,
        the positions to write and their K/V; None when nothing is written)."""
        user_id, kv, reused, tokens, kv_start = item
        length = kv_start + kv.shape[1]
        entry = self._entries.get(user_id)
        extendable = entry is not None and reused > 0 and entry.length == reused and entry.tokens == tokens.prefix(reused)
        if entry is not None and not extendable:
            self._drop(user_id, evicted=False)  # the user's history changed: the old prefix will not be asked for again
            entry = None
        if length == 0 or (reused if extendable else 0) < kv_start:
            return 0, None  # an empty history has nothing to reuse; a suffix alone cannot rebuild an entry
        if entry is None:
            self._ghost.forgotten(user_id)  # its ghost, if any, was this request's counterfactual hit
        start = reused if extendable else 0
        have = len(entry.pages) if entry is not None else 0
        need = -(-length // self.tokens_per_page) - have
        evicted = self._make_room(need, protect=user_id)
        if self._alloc.free_count(Side.KV) < need:
            return evicted, None
        if entry is None:
            entry = KVEntry(length=0, tokens=b"", pages=[])
            self._entries[user_id] = entry
        for _ in range(need):
            page = self._alloc.allocate(Side.KV)
            assert page is not None  # guaranteed by the free_count check above
            entry.pages.append(page)
        entry.length, entry.tokens = length, tokens.prefix(length)
        self._entries.move_to_end(user_id)
        self._ghost.touched(user_id, len(entry.pages))
        if length == start:
            return evicted, None
        positions = np.arange(start, length)
        return evicted, (np.asarray(entry.pages, dtype=np.int64), positions, kv[:, start - kv_start : length - kv_start])

    def release_pages(self, count: int) -> int:
        """Evict least recently used unpinned users until `count` KV pages are free; returns users evicted."""
        return self._make_room(count, protect=None)

    def cached_length(self, user_id: int) -> int:
        entry = self._entries.get(user_id)
        return entry.length if entry is not None else 0

    def users(self) -> list[int]:
        return list(self._entries)

    def check(self) -> None:
        """Raise if block tables overlap, point outside KV, or disagree with the allocator."""
        seen: set[int] = set()
        for user_id, entry in self._entries.items():
            if len(entry.pages) != -(-entry.length // self.tokens_per_page) or entry.length <= 0:
                raise AssertionError(f"user {user_id}: {len(entry.pages)} pages for {entry.length} tokens")
            for page in entry.pages:
                if page in seen:
                    raise AssertionError(f"page {page} is in two block tables")
                if self._alloc.owner(page) != Side.KV:
                    raise AssertionError(f"user {user_id}'s page {page} is owned by EMB")
                seen.add(page)
        in_use = set(self._alloc.pages_in_use(Side.KV).tolist())
        if in_use != seen:
            raise AssertionError("KV pages in use differ from the pages in block tables")

    def _make_room(self, need: int, protect: int | None) -> int:
        """Evict least recently used users, never `protect` nor a pinned one, until `need` pages are free."""
        evicted = 0
        while self._alloc.free_count(Side.KV) < need:
            victim = next((user for user in self._entries if user != protect and user not in self._pins), None)
            if victim is None:
                break
            self._drop(victim)
            evicted += 1
        return evicted

    def _drop(self, user_id: int, evicted: bool = True) -> None:
        entry = self._entries.pop(user_id)
        for page in entry.pages:
            self._alloc.release(Side.KV, page)
        if evicted:
            self._ghost.evicted(user_id, len(entry.pages), entry)
        else:
            self._ghost.forgotten(user_id)


def _host_int64(t: torch.Tensor) -> np.ndarray:
    """A 1-D id tensor as an int64 host array (zero-copy when it already is one)."""
    return t.detach().cpu().numpy().astype(np.int64, copy=False)


def _reusable(entry: KVEntry, tokens: HistoryTokens) -> bool:
    """The entry's tokens are a prefix of the request's history."""
    return entry.length <= tokens.length and tokens.prefix(entry.length) == entry.tokens
