"""Which users' KV prefixes a backend most likely still holds.

The router cannot see a backend's KV cache; it knows where it sent each user
and what the backend reports about its cache (how many users it holds, how many
it evicted). The pool evicts least-recently-used users, so the users the router
sent there most recently are the ones still resident: this record is an LRU of
(user -> history length served) trimmed by those reports.
"""

from __future__ import annotations

from collections import OrderedDict

# Until a backend reports its cached-user count, assume it can hold this many
# users: an over-estimate only costs a missed hit, never a wrong answer (the
# pool validates every hit by length + rolling hash).
DEFAULT_CAPACITY_USERS = 100_000


class KVResidency:
    """LRU record of users whose prefix was served on one backend."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY_USERS) -> None:
        if capacity < 1:
            raise ValueError(f"KVResidency.capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._users: OrderedDict[int, int] = OrderedDict()  # oldest first
        self._evictions_seen: float | None = None

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    @property
    def capacity(self) -> int:
        return self._capacity

    def record(self, user_id: int, history_len: int) -> None:
        """The backend is serving this user's history: after it, the whole history is its prefix."""
        self._users[user_id] = history_len
        self._users.move_to_end(user_id)
        self._trim(self._capacity)

    def cached_len(self, user_id: int, history_len: int) -> int:
        """Tokens of this history likely resident there (0 if not, or if the record is longer).

        A cached history longer than the request's cannot be its prefix (the pool
        would reject it), so it counts as a miss.
        """
        cached = self._users.get(user_id)
        if cached is None or cached > history_len:
            return 0
        return cached

    def fraction(self, user_id: int, history_len: int) -> float:
        """Share of the request's history whose KV the backend likely has (0..1)."""
        if history_len <= 0:
            return 1.0 if user_id in self._users else 0.0
        return self.cached_len(user_id, history_len) / history_len

    def observe_backend(self, cached_users: float | None, kv_evictions_total: float | None) -> None:
        """Fold in the backend's own report (gauge of cached users, counter of KV evictions).

        Only the `cached_users` most recent users can be resident now, so the record
        is cut to that many. Evictions since the last report mean the cache is full:
        its current size is then its capacity. Without the gauge, each eviction drops
        the oldest user of the record. A counter that went backwards means the
        backend restarted with an empty cache.
        """
        evicted = 0
        if kv_evictions_total is not None:
            previous, self._evictions_seen = self._evictions_seen, kv_evictions_total
            if previous is not None and kv_evictions_total < previous:
                self.clear()
                return
            evicted = 0 if previous is None else int(kv_evictions_total - previous)
        if cached_users is not None:
            if evicted > 0:
                self._capacity = max(1, int(cached_users))
            self._trim(int(cached_users))
        elif evicted > 0:
            self._trim(len(self._users) - evicted)

    def clear(self) -> None:
        """The backend lost its cache (restart, failure): nothing is resident any more."""
        self._users.clear()

    def _trim(self, keep: int) -> None:
        keep = max(0, keep)
        while len(self._users) > keep:
            self._users.popitem(last=False)
