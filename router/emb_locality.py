"""A bounded sketch of the item ids a backend has ranked recently: its EMB hot set.

The pool keeps hot item rows by frequency with recency (LFU+LRU), so an item
the router has sent to a backend often and lately is likely in that backend's
EMB cache. The sketch is a fixed array of counters indexed by a multiplicative
hash of the item id: O(1) memory per backend whatever the catalogue size, and
periodic halving so old popularity fades like the cache's own recency.

A request's ids are sampled and hashed once (`item_slots`, cached on the
`RouteRequest`); each backend's lookup is then one numpy gather, so scoring N
backends costs N gathers, not N hashings.
"""

from __future__ import annotations

import numpy as np

# 2^16 counters per backend (256 KiB): false positives stay under ~10% while a
# backend's recent hot set is under ~6,500 distinct items.
SLOTS_LOG2 = 16
# Fibonacci hashing: multiply by 2^64 / golden ratio, keep the top bits.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(64 - SLOTS_LOG2)
# A request's locality is estimated from at most this many of its candidates
# (an even stride over them): the share converges long before 2048 lookups, and
# the routing cost stays flat in the candidate count.
MAX_SAMPLED_ITEMS = 64


def sample(item_ids: np.ndarray) -> np.ndarray:
    """An even-stride subsample of at most MAX_SAMPLED_ITEMS ids."""
    stride = max(1, len(item_ids) // MAX_SAMPLED_ITEMS)
    return item_ids[::stride][:MAX_SAMPLED_ITEMS]


def item_slots(item_ids: np.ndarray) -> np.ndarray:
    """Sketch slots of a request's (sampled) item ids; the same for every backend."""
    keys = np.ascontiguousarray(sample(item_ids), dtype=np.int64).view(np.uint64)
    return ((keys * _GOLDEN) >> _SHIFT).astype(np.intp)


class HotItemSketch:
    """Counting sketch of recently seen item ids for one backend."""

    def __init__(self, decay_every: int = 1 << SLOTS_LOG2) -> None:
        # Halve every counter after `decay_every` item observations (about one
        # table's worth by default): an item seen once is forgotten after that,
        # one seen 2^k times survives k halvings. uint32 cannot overflow: a
        # counter grows by at most one per observation, so it stays < 2 * decay_every.
        if not 1 <= decay_every < 1 << 30:
            raise ValueError(f"HotItemSketch.decay_every must be in 1..2^30-1, got {decay_every}")
        self._counts = np.zeros(1 << SLOTS_LOG2, dtype=np.uint32)
        self._decay_every = decay_every
        self._since_decay = 0

    def hot_share(self, slots: np.ndarray) -> float:
        """Share of a request's sampled items (given by `item_slots`) seen here recently (0..1)."""
        if len(slots) == 0:
            return 0.0
        return np.count_nonzero(self._counts[slots]) / len(slots)

    def observe(self, slots: np.ndarray) -> None:
        """The backend is looking these items up now (slots from `item_slots`)."""
        if len(slots) == 0:
            return
        self._counts[slots] += 1
        self._since_decay += len(slots)
        if self._since_decay >= self._decay_every:
            self._counts >>= 1
            self._since_decay = 0

    def occupancy(self) -> float:
        """Share of non-zero counters: the false-positive rate of `hot_share`."""
        return float(np.count_nonzero(self._counts)) / len(self._counts)

    def clear(self) -> None:
        self._counts[:] = 0
        self._since_decay = 0
