"""A bounded sketch of the item ids a backend has ranked recently: its EMB hot set.

The pool keeps hot item rows by frequency with recency (LFU+LRU), so an item
the router has sent to a backend often and lately is likely in that backend's
EMB cache. The sketch is a fixed array of saturating 8-bit counters indexed by
a multiplicative hash of the item id: O(1) memory per backend whatever the
catalogue size, vectorised numpy lookups (microseconds for a request), and
periodic halving so old popularity fades like the cache's own recency.
"""

from __future__ import annotations

import numpy as np

# Fibonacci hashing: multiply by 2^64 / golden ratio, keep the top bits.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# A request's locality is estimated from at most this many of its candidates
# (an even stride over them): the share converges long before 2048 lookups, and
# the routing cost stays flat in the candidate count.
MAX_SAMPLED_ITEMS = 64


def sample(item_ids: np.ndarray) -> np.ndarray:
    """An even-stride subsample of at most MAX_SAMPLED_ITEMS ids."""
    stride = max(1, len(item_ids) // MAX_SAMPLED_ITEMS)
    return item_ids[::stride][:MAX_SAMPLED_ITEMS]


class HotItemSketch:
    """Counting sketch of recently seen item ids for one backend."""

    def __init__(self, slots_log2: int = 16, decay_every: int | None = None) -> None:
        if not 8 <= slots_log2 <= 24:
            raise ValueError(f"HotItemSketch.slots_log2 must be in 8..24, got {slots_log2}")
        self._counts = np.zeros(1 << slots_log2, dtype=np.uint8)
        self._shift = np.uint64(64 - slots_log2)
        # Halve every counter after about one table's worth of observations: an
        # item seen once is forgotten after that, one seen 2^k times survives k halvings.
        self._decay_every = decay_every if decay_every is not None else 1 << slots_log2
        if self._decay_every < 1:
            raise ValueError(f"HotItemSketch.decay_every must be >= 1, got {self._decay_every}")
        self._since_decay = 0

    def _slots(self, item_ids: np.ndarray) -> np.ndarray:
        keys = np.asarray(item_ids, dtype=np.int64).view(np.uint64)
        return ((keys * _GOLDEN) >> self._shift).astype(np.intp)

    def hot_share(self, item_ids: np.ndarray) -> float:
        """Share of `item_ids` (sampled) that the backend has seen recently (0..1)."""
        ids = sample(item_ids)
        if len(ids) == 0:
            return 0.0
        return float(np.count_nonzero(self._counts[self._slots(ids)])) / len(ids)

    def observe(self, item_ids: np.ndarray) -> None:
        """The backend is looking these items up now."""
        ids = sample(item_ids)
        if len(ids) == 0:
            return
        slots = self._slots(ids)
        counts = self._counts[slots]
        self._counts[slots] = np.minimum(counts, 254) + 1
        self._since_decay += len(ids)
        if self._since_decay >= self._decay_every:
            self._counts >>= 1
            self._since_decay = 0

    def occupancy(self) -> float:
        """Share of non-zero counters: the false-positive rate of `hot_share`."""
        return float(np.count_nonzero(self._counts)) / len(self._counts)

    def clear(self) -> None:
        self._counts[:] = 0
        self._since_decay = 0
