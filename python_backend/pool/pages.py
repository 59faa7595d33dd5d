"""Page allocator and owner map: which side owns each page of the pool.

Every page is owned by exactly one side (EMB or KV) and is, within that side,
either free or in use. The caches ask their side for pages and give them
back; only a *free* page can change sides, so moving alpha never moves data:
the shrinking side first evicts until it has free pages, then hands them over.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Side(IntEnum):
    EMB = 0
    KV = 1


class PageAllocator:
    """Owner map plus one free list per side (LIFO, so hot pages are reused first)."""

    def __init__(self, num_pages: int, emb_pages: int) -> None:
        if num_pages < 1:
            raise ValueError(f"num_pages must be >= 1, got {num_pages}")
        if not 0 <= emb_pages <= num_pages:
            raise ValueError(f"emb_pages must be in [0, num_pages={num_pages}], got {emb_pages}")
        self.num_pages = num_pages
        self._owner = np.full(num_pages, Side.KV, dtype=np.int8)
        self._owner[:emb_pages] = Side.EMB
        self._in_use = np.zeros(num_pages, dtype=bool)
        # Reversed so pop() hands out low page numbers first: easier to read in dumps.
        self._free: dict[Side, list[int]] = {
            Side.EMB: list(range(emb_pages - 1, -1, -1)),
            Side.KV: list(range(num_pages - 1, emb_pages - 1, -1)),
        }
        self._pages = {Side.EMB: emb_pages, Side.KV: num_pages - emb_pages}

    def owner(self, page: int) -> Side:
        return Side(int(self._owner[page]))

    def pages(self, side: Side) -> int:
        return self._pages[side]

    def free_count(self, side: Side) -> int:
        return len(self._free[side])

    def used_count(self, side: Side) -> int:
        return self._pages[side] - len(self._free[side])

    def used_pages(self) -> int:
        return int(self._in_use.sum())

    def allocate(self, side: Side) -> int | None:
        """A free page of `side`, now in use; None when the side has none free."""
        free = self._free[side]
        if not free:
            return None
        page = free.pop()
        self._in_use[page] = True
        return page

    def release(self, side: Side, page: int) -> None:
        if self._owner[page] != side:
            raise ValueError(f"page {page} is owned by {self.owner(page).name}, not {side.name}")
        if not self._in_use[page]:
            raise ValueError(f"page {page} of {side.name} released twice")
        self._in_use[page] = False
        self._free[side].append(page)

    def transfer_free(self, src: Side, count: int) -> int:
        """Give up to `count` free pages of `src` to the other side; returns how many moved."""
        dst = Side.KV if src == Side.EMB else Side.EMB
        moved = 0
        while moved < count and self._free[src]:
            page = self._free[src].pop()
            self._owner[page] = dst
            self._free[dst].append(page)
            moved += 1
        self._pages[src] -= moved
        self._pages[dst] += moved
        return moved

    def check(self) -> None:
        """Raise if the owner map and free lists disagree (each page: one owner, one state)."""
        for side in Side:
            free = self._free[side]
            if len(set(free)) != len(free):
                raise AssertionError(f"{side.name} free list holds a page twice")
            for page in free:
                if self._owner[page] != side or self._in_use[page]:
                    raise AssertionError(f"free page {page} of {side.name} is owned elsewhere or in use")
            if int((self._owner == side).sum()) != self._pages[side]:
                raise AssertionError(f"{side.name} page count {self._pages[side]} disagrees with the owner map")
        if self._pages[Side.EMB] + self._pages[Side.KV] != self.num_pages:
            raise AssertionError("pages of both sides do not add up to the pool")

    def pages_in_use(self, side: Side) -> np.ndarray:
        """Page numbers of `side` currently handed out to its cache."""
        return np.flatnonzero((self._owner == side) & self._in_use)
