"""What the KV cache's hit rate would be with `delta_pages` more or fewer pages, measured, not modelled.

The controller's own observation says how the current split performs; to
see which way alpha should move it also needs the hit rate at the
neighbouring splits (docs/allocator.md: without it the gap to alpha* stays at
about 0.02). The KV cache is an LRU over users, and LRU is a stack policy: a
cache of C pages holds exactly the most recently used users that fit in C.
So both neighbours can be read off the one running cache, as in ghost-cache
and miss-ratio-curve work (ARC's ghost lists, Mattson's stack distances):

- fewer pages: a hit on a user among the least recently used
  `delta_pages - free pages` of the cache (the "bottom" segment) would have
  been a miss with `delta_pages` less KV: a cache that is not full loses only
  what no longer fits;
- more pages: a miss on a user evicted while still among the last
  `delta_pages` worth of evictions (the "ghost" list, metadata only) would
  have been a hit with `delta_pages` more.

Pages are counted per user as the cache holds them, so the stack is in pages,
not users. The ghost keeps the caller's record of the evicted entry (the real
cache keeps its `KVEntry`, whose token bytes it already owns: no copy), so the
caller can check the prefix would really have been reusable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class KVGhost(Generic[Entry]):
    """Mirrors the KV cache's LRU order in two segments plus a ghost list of recent evictions.

    The owner calls `touched` whenever a user becomes the most recently used
    (a hit, a store), `evicted` when capacity pushed a user out and
    `forgotten` when an entry was dropped for any other reason (its history
    changed). Every call is O(1) amortised.
    """

    def __init__(self, delta_pages: int) -> None:
        if delta_pages < 1:
            raise ValueError(f"KVGhost.delta_pages must be >= 1, got {delta_pages}")
        self.delta_pages = delta_pages
        self._top: OrderedDict[int, int] = OrderedDict()  # user -> pages, the recent part, LRU first
        self._bottom: OrderedDict[int, int] = OrderedDict()  # the LRU-most users within delta_pages
        self._bottom_pages = 0
        self._bottom_budget = delta_pages
        self._ghost: OrderedDict[int, tuple[int, Entry]] = OrderedDict()  # user -> (pages, entry), oldest first
        self._ghost_pages = 0

    def touched(self, user: int, pages: int) -> None:
        """`user` is now the most recently used resident, holding `pages` pages."""
        self._unlink(user)
        self._top[user] = pages
        self._rebalance()

    def evicted(self, user: int, pages: int, entry: Entry) -> None:
        """Capacity evicted `user`: remember its entry among the last `delta_pages` of evictions."""
        self._unlink(user)
        self._ghost[user] = (pages, entry)
        self._ghost_pages += pages
        while self._ghost_pages > self.delta_pages:
            _, (old_pages, _) = self._ghost.popitem(last=False)
            self._ghost_pages -= old_pages
        self._rebalance()

    def forgotten(self, user: int) -> None:
        """Stop tracking `user`: its entry was dropped for a reason other than capacity (no neighbour
        would hold it either), or a new entry is about to replace its ghost (call this before the
        evictions that make room for it, so they do not push out ghosts a larger cache would keep)."""
        self._unlink(user)
        self._rebalance()

    def in_bottom(self, user: int, free_pages: int) -> bool:
        """True if `user` would not be resident with `delta_pages` fewer pages, given the cache's free pages."""
        self._bottom_budget = max(0, self.delta_pages - free_pages)
        self._rebalance()
        return user in self._bottom

    def ghost(self, user: int) -> Entry | None:
        """The entry of `user` if it was evicted within the last `delta_pages` of evictions."""
        item = self._ghost.get(user)
        return None if item is None else item[1]

    def _unlink(self, user: int) -> None:
        if self._top.pop(user, None) is None:
            pages = self._bottom.pop(user, None)
            if pages is not None:
                self._bottom_pages -= pages
        item = self._ghost.pop(user, None)
        if item is not None:
            self._ghost_pages -= item[0]

    def _rebalance(self) -> None:
        """Keep the bottom the LRU run of residents that reaches into the last `_bottom_budget` pages.

        A user partly inside that run counts: a cache that much smaller could not hold all of it.
        """
        while self._bottom:  # the budget shrank: hand back users that lie wholly above it
            user, pages = next(reversed(self._bottom.items()))
            if self._bottom_pages - pages < self._bottom_budget:
                break
            del self._bottom[user]
            self._bottom_pages -= pages
            self._top[user] = pages
            self._top.move_to_end(user, last=False)
        while self._top and self._bottom_pages < self._bottom_budget:
            user, pages = self._top.popitem(last=False)
            self._bottom[user] = pages
            self._bottom_pages += pages
