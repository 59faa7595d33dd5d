"""Zipf popularity laws over a set of ids: the share of draws the top ranks take, and ids drawn from it.

Two implementations with one interface (`ZipfLaw`):

- `TableZipf`: the CDF and the rank -> id permutation as arrays (16 bytes an id).
  The paper workload's 5M items (80 MB) use it, bit-identical to what traces
  were before these classes existed.
- `CompactZipf`: the same law in O(1) memory, for the production workload's 50M
  items and millions of users (an 800 MB table per trace otherwise, copied into
  every simulator worker). The CDF is exact over the first `_HEAD` ranks and
  the midpoint-rule integral of x^-s beyond (absolute error below 1e-9 of the
  normaliser, far under one rank's mass), inverted in closed form; rank -> id is
  a keyed Feistel bijection over [0, n) with cycle walking, so every id is
  reachable and the map is reproducible from the key alone.

Consumers: `cdf_at(rows)` is an EMB cache's hit rate when it holds the `rows`
most popular rows (ideal LFU); `sample(u)` turns uniforms into ids.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Ranks whose cumulative weight CompactZipf keeps exactly (512 KiB).
_HEAD = 1 << 16
_FEISTEL_ROUNDS = 4


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash: uint64 -> uint64 with full avalanche (Steele et al., SplitMix64)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """CDF over popularity ranks 0..n-1 of a Zipf law with the given exponent (float64, ends at 1)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** (-exponent)
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


class ZipfLaw(Protocol):
    """A popularity law over `size` ids `first_id .. first_id + size - 1` (rank 0 the most popular)."""

    size: int
    first_id: int

    def cdf_at(self, rows: np.ndarray | int) -> np.ndarray:
        """Share of draws that fall on the `rows` most popular ids (0 for rows <= 0, 1 for rows >= size)."""
        ...

    def rank_of_uniform(self, u: np.ndarray) -> np.ndarray:
        """Popularity rank (int64) of each uniform [0, 1) draw."""
        ...

    def id_of_rank(self, rank: np.ndarray) -> np.ndarray:
        """The id (int64) at each popularity rank."""
        ...

    def rank_of_id(self, ids: np.ndarray) -> np.ndarray:
        """The popularity rank (int64) of each id."""
        ...

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Ids (int64) drawn by uniforms `u`: `id_of_rank(rank_of_uniform(u))`."""
        ...


class TableZipf:
    """A Zipf law held as arrays: `cdf` over ranks and the `ids` at each rank (a permutation)."""

    def __init__(self, cdf: np.ndarray, ids: np.ndarray) -> None:
        if cdf.shape != ids.shape or cdf.ndim != 1 or cdf.shape[0] < 1:
            raise ValueError(f"TableZipf: cdf and ids must be 1-D of one non-zero length, got {cdf.shape}, {ids.shape}")
        self.cdf = cdf
        self.ids = ids
        self.size = int(cdf.shape[0])
        self.first_id = int(ids.min())

    def cdf_at(self, rows: np.ndarray | int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows > 0, self.cdf[np.clip(rows - 1, 0, self.size - 1)], 0.0)

    def rank_of_uniform(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), self.size - 1)

    def id_of_rank(self, rank: np.ndarray) -> np.ndarray:
        return self.ids[rank]

    def rank_of_id(self, ids: np.ndarray) -> np.ndarray:
        rank_of = np.empty(self.size + self.first_id, dtype=np.int64)
        rank_of[self.ids] = np.arange(self.size)
        return rank_of[np.asarray(ids, dtype=np.int64)]

    def sample(self, u: np.ndarray) -> np.ndarray:
        return self.id_of_rank(self.rank_of_uniform(u))


class CompactZipf:
    """A Zipf law over `size` ids from `first_id`, in O(1) memory (see the module docstring)."""

    def __init__(self, size: int, exponent: float, key: int, first_id: int = 0) -> None:
        if size < 1 or exponent < 0:
            raise ValueError(f"CompactZipf needs size >= 1 and exponent >= 0, got {size}, {exponent}")
        self.size = int(size)
        self.first_id = int(first_id)
        self.exponent = float(exponent)
        head = min(self.size, _HEAD)
        self._head_cum = np.cumsum(np.arange(1, head + 1, dtype=np.float64) ** (-self.exponent))  # H(1..head)
        self._head = head
        self._total = float(self._harmonic(np.array([self.size]))[0])
        # Feistel over 2 * half_bits bits >= size; cycle walking keeps it a bijection on [0, size).
        self._half_bits = max(1, (int(self.size - 1).bit_length() + 1) // 2)
        self._half_mask = np.uint64((1 << self._half_bits) - 1)
        keys = splitmix64(np.uint64(key & 0xFFFFFFFFFFFFFFFF) + np.arange(1, _FEISTEL_ROUNDS + 1, dtype=np.uint64))
        self._round_keys = [np.uint64(k) for k in keys]

    def _tail_anchor(self) -> float:
        return (self._head + 0.5) ** (1.0 - self.exponent) if self.exponent != 1.0 else np.log(self._head + 0.5)

    def _harmonic(self, k: np.ndarray) -> np.ndarray:
        """H(k) = sum_{i=1..k} i^-s: exact up to the head, head sum + midpoint integral beyond."""
        k = np.asarray(k, dtype=np.float64)
        head_part = np.where(k >= 1, self._head_cum[np.clip(k.astype(np.int64) - 1, 0, self._head - 1)], 0.0)
        s = self.exponent
        with np.errstate(divide="ignore", invalid="ignore"):
            if s == 1.0:
                tail = np.log(k + 0.5) - self._tail_anchor()
            else:
                tail = ((k + 0.5) ** (1.0 - s) - self._tail_anchor()) / (1.0 - s)
        return np.where(k > self._head, self._head_cum[-1] + tail, head_part)

    def cdf_at(self, rows: np.ndarray | int) -> np.ndarray:
        rows = np.clip(np.asarray(rows, dtype=np.int64), 0, self.size)
        return self._harmonic(rows) / self._total

    def rank_of_uniform(self, u: np.ndarray) -> np.ndarray:
        x = np.asarray(u, dtype=np.float64) * self._total
        rank = np.searchsorted(self._head_cum, x, side="right")  # smallest r with H(r + 1) > x
        beyond = x >= self._head_cum[-1]
        if beyond.any():
            s = self.exponent
            excess = x[beyond] - self._head_cum[-1]
            if s == 1.0:
                k = np.exp(excess + self._tail_anchor()) - 0.5
            else:
                k = (excess * (1.0 - s) + self._tail_anchor()) ** (1.0 / (1.0 - s)) - 0.5
            rank[beyond] = np.floor(k).astype(np.int64)  # H(r) <= x < H(r + 1)
        return np.clip(rank, 0, self.size - 1).astype(np.int64)

    def _feistel(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        b = np.uint64(self._half_bits)
        left, right = x >> b, x & self._half_mask
        keys = self._round_keys[::-1] if inverse else self._round_keys
        for k in keys:
            if inverse:
                left, right = right ^ (splitmix64(left ^ k) & self._half_mask), left
            else:
                left, right = right, left ^ (splitmix64(right ^ k) & self._half_mask)
        return (left << b) | right

    def _permute(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        y = self._feistel(np.asarray(x, dtype=np.uint64), inverse)
        n = np.uint64(self.size)
        out = y >= n
        while out.any():  # cycle walking: apply again until back inside [0, size)
            y[out] = self._feistel(y[out], inverse)
            out = y >= n
        return y.astype(np.int64)

    def id_of_rank(self, rank: np.ndarray) -> np.ndarray:
        return self._permute(rank, inverse=False) + self.first_id

    def rank_of_id(self, ids: np.ndarray) -> np.ndarray:
        return self._permute(np.asarray(ids, dtype=np.int64) - self.first_id, inverse=True)

    def sample(self, u: np.ndarray) -> np.ndarray:
        return self.id_of_rank(self.rank_of_uniform(u))
