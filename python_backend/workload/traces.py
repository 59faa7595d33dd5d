"""Seeded, reproducible request traces for the Steady, Trend and Burst workloads.

A trace is columnar: one numpy array per field, one row per request, sorted by
arrival time. Millions of requests generate in seconds because nothing is
materialised per request except five scalars; the item ids of a history or of
a candidate set are a pure function of (seed, user, position) or (seed,
request, slot) through a counter-based hash, so any consumer (the node
simulator, the cluster simulator, a Locust user) can draw them on demand and
two consumers of the same trace always see the same ids.

Why histories are prefixes: a user's item sequence is an infinite, fixed
stream (position p of user u is always the same item), and every request of
that user carries the first `history_len` items of it, with `history_len`
never shrinking. So the KV of an earlier request is exactly a prefix of the
KV of a later one, which is what the KV cache reuses and extends.

Popularity: users and items are Zipf-distributed over a seeded permutation of
their ids (popular ids are scattered, not 0, 1, 2, ...). A `hot_user_share`
of requests comes from a small hot set of users (a live event, a power-user
segment); that share drifts in Trend and spikes in Burst, together with the
arrival rate in Burst.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

REGIMES = ("steady", "trend", "burst")

# Item id 0 is left out of every trace: model code may use it as padding.
FIRST_ITEM_ID = 1
# History events are placed one a minute from this Unix time (2024-01-01 UTC).
EPOCH_S = 1_704_067_200
# Arrivals are drawn per slot of this many seconds (piecewise-constant rate).
_RATE_SLOT_S = 0.05
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class TraceConfig:
    """Everything that determines a trace; the same config always gives the same trace."""

    num_users: int = 100_000
    num_items: int = 5_000_000
    user_zipf: float = 0.8  # exponent of the background user popularity
    item_zipf: float = 0.7  # exponent of item popularity (history and candidates)
    hot_users: int = 600  # size of the hot set
    hot_user_share: float = 0.3  # share of requests sent by the hot set
    mean_history_len: float = 1000.0  # mean length of a user's first history
    history_growth_per_s: float = 0.2  # items a user adds to their history per second after the first visit
    max_history_len: int = 4096
    arrival_rate: float = 1700.0  # requests per second (base rate)
    candidates: int = 512  # candidate items per request
    duration_s: float = 600.0
    seed: int = 0
    regime: str = "steady"
    # Trend: linear drift from the base values to these over the first `trend_period_s` (then held),
    # so a short trace of the regime sees the same dynamics as a long one, just less of them.
    trend_period_s: float = 600.0
    trend_hot_share_end: float = 0.7
    trend_history_scale_end: float = 2.0
    # Burst: every `burst_every_s` (first at half that) a burst of `burst_len_s`.
    burst_every_s: float = 120.0
    burst_len_s: float = 20.0
    burst_hot_share: float = 0.7
    burst_rate_mult: float = 1.3

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"TraceConfig.regime must be one of {REGIMES}, got {self.regime!r}")
        for name in ("num_users", "num_items", "hot_users", "max_history_len", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"TraceConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hot_users > self.num_users:
            raise ValueError(f"TraceConfig.hot_users ({self.hot_users}) must be <= num_users ({self.num_users})")
        if self.num_items <= FIRST_ITEM_ID:
            raise ValueError(f"TraceConfig.num_items must be > {FIRST_ITEM_ID} (id 0 is reserved), got {self.num_items}")
        for name in ("hot_user_share", "trend_hot_share_end", "burst_hot_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TraceConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("arrival_rate", "duration_s", "mean_history_len", "burst_every_s", "burst_len_s", "trend_period_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TraceConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.trend_history_scale_end < 1.0:
            raise ValueError("TraceConfig.trend_history_scale_end must be >= 1 so histories never shrink")
        if self.history_growth_per_s < 0 or self.burst_rate_mult <= 0 or self.user_zipf < 0 or self.item_zipf < 0:
            raise ValueError("TraceConfig: history_growth_per_s, user_zipf, item_zipf must be >= 0, burst_rate_mult > 0")

    def hot_share_at(self, t_s: np.ndarray) -> np.ndarray:
        """Share of requests from the hot set at times `t_s` (the regime's schedule)."""
        t_s = np.asarray(t_s, dtype=np.float64)
        if self.regime == "trend":
            frac = np.clip(t_s / self.trend_period_s, 0.0, 1.0)
            return self.hot_user_share + frac * (self.trend_hot_share_end - self.hot_user_share)
        if self.regime == "burst":
            return np.where(self.in_burst(t_s), self.burst_hot_share, self.hot_user_share)
        return np.full_like(t_s, self.hot_user_share)

    def rate_at(self, t_s: np.ndarray) -> np.ndarray:
        """Arrival rate (req/s) at times `t_s`."""
        t_s = np.asarray(t_s, dtype=np.float64)
        if self.regime == "burst":
            return np.where(self.in_burst(t_s), self.arrival_rate * self.burst_rate_mult, self.arrival_rate)
        return np.full_like(t_s, self.arrival_rate)

    def history_scale_at(self, t_s: np.ndarray) -> np.ndarray:
        """Multiplier on users' base history length; non-decreasing in time so histories only grow."""
        t_s = np.asarray(t_s, dtype=np.float64)
        if self.regime == "trend":
            frac = np.clip(t_s / self.trend_period_s, 0.0, 1.0)
            return 1.0 + frac * (self.trend_history_scale_end - 1.0)
        return np.ones_like(t_s)

    def in_burst(self, t_s: np.ndarray) -> np.ndarray:
        """True where `t_s` falls inside a burst (always False outside the Burst regime)."""
        t_s = np.asarray(t_s, dtype=np.float64)
        if self.regime != "burst":
            return np.zeros(t_s.shape, dtype=bool)
        phase = (t_s - self.burst_every_s / 2) % self.burst_every_s
        return (t_s >= self.burst_every_s / 2) & (phase < self.burst_len_s)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash: uint64 -> uint64 with full avalanche (Steele et al., SplitMix64)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _uniform(stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats keyed by (stream, a, b); the same key always gives the same number."""
    with np.errstate(over="ignore"):
        key = (np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)) ^ _splitmix64(a.astype(np.uint64))
        h = _splitmix64(key ^ (b.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """CDF over popularity ranks 0..n-1 of a Zipf law with the given exponent (float64, ends at 1)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** (-exponent)
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


@dataclass(frozen=True)
class Trace:
    """A generated trace: columns of equal length, sorted by `t_s`.

    Columns:
      t_s            float64  arrival time in seconds from the trace start
      user_id        int64    the requesting user
      history_len    int32    length of the request's history (a prefix of the user's stream)
      prev_len       int32    history length of the user's previous request (0 on a first visit):
                              the prefix a KV cache can reuse
      since_prev_s   float64  seconds since the user's previous request (inf on a first visit)
    """

    config: TraceConfig
    t_s: np.ndarray
    user_id: np.ndarray
    history_len: np.ndarray
    prev_len: np.ndarray
    since_prev_s: np.ndarray
    item_cdf: np.ndarray = dataclasses.field(repr=False)  # Zipf CDF over item popularity ranks
    item_of_rank: np.ndarray = dataclasses.field(repr=False)  # popularity rank -> item id

    def __len__(self) -> int:
        return int(self.t_s.shape[0])

    def history_ids(self, i: int) -> np.ndarray:
        """Item ids (int64) of request `i`'s history, oldest first."""
        return self.user_stream(int(self.user_id[i]), int(self.history_len[i]))

    def user_stream(self, user_id: int, length: int) -> np.ndarray:
        """The first `length` items of `user_id`'s fixed item stream."""
        pos = np.arange(length, dtype=np.int64)
        u = _uniform(self.config.seed * 4 + 1, np.full(length, user_id, dtype=np.int64), pos)
        return self._items(u)

    def history_timestamps(self, i: int) -> np.ndarray:
        """Unix int64 seconds of request `i`'s history events, oldest first.

        Fixed per position (one event a minute from `EPOCH_S`), so a user's earlier history keeps its
        timestamps on every later visit and its KV stays reusable; all lie before any request time.
        """
        return EPOCH_S + 60 * np.arange(int(self.history_len[i]), dtype=np.int64)

    def request_timestamp(self, i: int) -> int:
        """Unix int64 seconds of request `i` (after every history event of every user)."""
        return int(EPOCH_S + 60 * self.config.max_history_len + int(self.t_s[i]))

    def candidate_ids(self, i: int) -> np.ndarray:
        """Item ids (int64) of request `i`'s candidate set."""
        c = self.config.candidates
        u = _uniform(self.config.seed * 4 + 2, np.full(c, i, dtype=np.int64), np.arange(c, dtype=np.int64))
        return self._items(u)

    def item_rank(self, item_ids: np.ndarray) -> np.ndarray:
        """Popularity rank (0 = most popular) of each item id, for LFU-style cache models."""
        rank_of_item = np.empty(self.item_of_rank.shape[0] + FIRST_ITEM_ID, dtype=np.int64)
        rank_of_item[self.item_of_rank] = np.arange(self.item_of_rank.shape[0])
        return rank_of_item[np.asarray(item_ids, dtype=np.int64)]

    def window(self, t0: float, t1: float) -> slice:
        """Row slice of the requests with t0 <= t_s < t1 (rows are time-sorted)."""
        lo, hi = np.searchsorted(self.t_s, [t0, t1], side="left")
        return slice(int(lo), int(hi))

    def _items(self, u: np.ndarray) -> np.ndarray:
        rank = np.minimum(np.searchsorted(self.item_cdf, u, side="right"), self.item_cdf.shape[0] - 1)
        return self.item_of_rank[rank]


def generate(config: TraceConfig) -> Trace:
    """Generate the trace that `config` describes (deterministic in `config`)."""
    rng = np.random.default_rng(config.seed)
    # Arrivals: Poisson counts per slot of a piecewise-constant rate, uniform times within a slot.
    slots = np.arange(0.0, config.duration_s, _RATE_SLOT_S)
    counts = rng.poisson(config.rate_at(slots + _RATE_SLOT_S / 2) * _RATE_SLOT_S)
    t_s = np.repeat(slots, counts) + rng.random(int(counts.sum())) * _RATE_SLOT_S
    t_s.sort()
    n = t_s.shape[0]

    # Users: hot set with probability hot_share(t), otherwise Zipf over all users.
    user_perm = rng.permutation(config.num_users).astype(np.int64)
    hot_set = user_perm[: config.hot_users]
    user_cdf = zipf_cdf(config.num_users, config.user_zipf)
    background = user_perm[np.minimum(np.searchsorted(user_cdf, rng.random(n), side="right"), config.num_users - 1)]
    is_hot = rng.random(n) < config.hot_share_at(t_s)
    user_id = np.where(is_hot, hot_set[rng.integers(0, config.hot_users, n)], background)

    # First and previous visit of each request's user (a stable sort keeps time order per user).
    order = np.argsort(user_id, kind="stable")
    u_sorted = user_id[order]
    first = np.ones(n, dtype=bool)
    first[1:] = u_sorted[1:] != u_sorted[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    t_first = np.empty(n)
    t_first[order] = t_s[order][group_start]

    # History length: the user's base length scaled by the (non-decreasing) regime scale, plus the
    # items added since the first visit (engagement accrues with time, not with requests).
    base_len = np.maximum(1.0, rng.geometric(1.0 / config.mean_history_len, config.num_users))
    hist = np.floor(base_len[user_id] * config.history_scale_at(t_s) + config.history_growth_per_s * (t_s - t_first))
    history_len = np.minimum(hist, config.max_history_len).astype(np.int32)

    prev_sorted = np.empty(n, dtype=np.int64)
    prev_sorted[0] = -1
    prev_sorted[1:] = np.where(first[1:], -1, order[:-1])
    prev_row = np.empty(n, dtype=np.int64)
    prev_row[order] = prev_sorted
    has_prev = prev_row >= 0
    prev_len = np.where(has_prev, history_len[np.maximum(prev_row, 0)], 0).astype(np.int32)
    since_prev_s = np.where(has_prev, t_s - t_s[np.maximum(prev_row, 0)], np.inf)

    n_ranked = config.num_items - FIRST_ITEM_ID
    item_of_rank = rng.permutation(n_ranked).astype(np.int64) + FIRST_ITEM_ID
    return Trace(
        config=config,
        t_s=t_s,
        user_id=user_id,
        history_len=history_len,
        prev_len=prev_len,
        since_prev_s=since_prev_s,
        item_cdf=zipf_cdf(n_ranked, config.item_zipf),
        item_of_rank=item_of_rank,
    )


def regime_config(regime: str, seed: int, scale: float = 1.0, **overrides: object) -> TraceConfig:
    """The standard config of a regime; `scale` multiplies users, hot set and arrival rate (node count)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    base = TraceConfig()
    cfg = dataclasses.replace(
        base,
        regime=regime,
        seed=seed,
        num_users=max(1, int(round(base.num_users * scale))),
        hot_users=max(1, int(round(base.hot_users * scale))),
        arrival_rate=base.arrival_rate * scale,
    )
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def make_trace(regime: str, seed: int, scale: float = 1.0, **overrides: object) -> Trace:
    """A seeded trace of a standard regime: `make_trace("burst", seed=3, duration_s=60.0)`."""
    return generate(regime_config(regime, seed, scale, **overrides))
