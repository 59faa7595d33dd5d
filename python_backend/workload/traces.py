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

Two named workloads (`WORKLOADS`, picked by `regime_config(..., workload=)`):
"paper", the defaults of `TraceConfig` (unchanged since the paper's tables were
produced), and "production", the MLPerf DLRMv3-sized node of issue 16: 50M
items, histories of 6,400 events on average up to 14,000, 2048 candidates,
users who come back within a session as MovieLens-100K's users do, and bursts
of 20 s after a 60 s calm lead-in (`helmrec.workload.production` has every
constant's source, docs/workload.md the discussion).

Sessions (production): a background request continues an earlier session with
probability `session_return_share`; it then belongs to the user of the latest
background request at least one gap earlier, the gap drawn from
`session_gap_quantiles_s`. Arrival times are drawn first and only users are
assigned, so rate schedules and burst edges are exact; a continued session
whose gap reaches before the trace start is a user first seen in the trace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from helmrec.workload import production as prod
from helmrec.workload.zipf import CompactZipf, TableZipf, ZipfLaw, splitmix64, zipf_cdf

REGIMES = ("steady", "trend", "burst")
HISTORY_LAWS = ("geometric", "lognormal")

# Item id 0 is left out of every trace: model code may use it as padding.
FIRST_ITEM_ID = 1
# History events are placed one a minute from this Unix time (2024-01-01 UTC).
EPOCH_S = 1_704_067_200
# Arrivals are drawn per slot of this many seconds (piecewise-constant rate).
_RATE_SLOT_S = 0.05
# Hash streams (with the seed) of the compact laws' keys and of the hashed per-user history bases.
_USER_LAW_STREAM, _ITEM_LAW_STREAM, _BASE_LEN_STREAM = 11, 12, 13


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
    burst_start_s: float | None = None  # first burst; None: half of burst_every_s
    # Production-scale options (the defaults are the paper workload's behaviour, bit for bit).
    # compact: users and items follow `CompactZipf` (O(1) memory, any count) and a user's base
    # history length is hashed from its id, so nothing is sized by num_users or num_items.
    compact: bool = False
    history_law: str = "geometric"  # of a user's base history length, mean `mean_history_len`
    history_log_sigma: float = 0.0  # lognormal: standard deviation of log(length)
    session_return_share: float = 0.0  # share of background requests that continue a session
    session_gap_quantiles_s: tuple[float, ...] = ()  # the in-session gap law, evenly spaced quantiles

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
        if self.burst_start_s is not None and self.burst_start_s < 0:
            raise ValueError(f"TraceConfig.burst_start_s must be >= 0 or None, got {self.burst_start_s}")
        if self.history_law not in HISTORY_LAWS:
            raise ValueError(f"TraceConfig.history_law must be one of {HISTORY_LAWS}, got {self.history_law!r}")
        if self.history_log_sigma < 0 or (self.history_law == "lognormal" and self.history_log_sigma == 0):
            raise ValueError(f"TraceConfig.history_log_sigma must be > 0 for a lognormal law, got {self.history_log_sigma}")
        if not 0.0 <= self.session_return_share < 1.0:
            raise ValueError(f"TraceConfig.session_return_share must be in [0, 1), got {self.session_return_share}")
        gaps = np.asarray(self.session_gap_quantiles_s, dtype=np.float64)
        if self.session_return_share > 0 and (gaps.size < 2 or gaps[0] <= 0 or np.any(np.diff(gaps) < 0)):
            raise ValueError("TraceConfig.session_gap_quantiles_s must be >= 2 positive, non-decreasing gaps with sessions on")

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
        first = self.burst_every_s / 2 if self.burst_start_s is None else self.burst_start_s
        phase = (t_s - first) % self.burst_every_s
        return (t_s >= first) & (phase < self.burst_len_s)


def _uniform(stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats keyed by (stream, a, b); the same key always gives the same number."""
    with np.errstate(over="ignore"):
        key = (np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)) ^ splitmix64(a.astype(np.uint64))
        h = splitmix64(key ^ (b.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


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
    items: ZipfLaw = dataclasses.field(repr=False)  # item popularity: cdf_at(rows), sample(u)

    def __len__(self) -> int:
        return int(self.t_s.shape[0])

    @property
    def item_cdf(self) -> np.ndarray:
        """The item CDF as an array (paper workload only; use `items.cdf_at` / `items.sample`)."""
        return self._table().cdf

    @property
    def item_of_rank(self) -> np.ndarray:
        """Popularity rank -> item id as an array (paper workload only; use `items.id_of_rank`)."""
        return self._table().ids

    def _table(self) -> TableZipf:
        if not isinstance(self.items, TableZipf):
            raise ValueError(
                "this trace's item law is compact (TraceConfig.compact): it has no table; "
                "use Trace.items.cdf_at(rows) and Trace.items.sample(u)"
            )
        return self.items

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
        return self.items.rank_of_id(np.asarray(item_ids, dtype=np.int64))

    def window(self, t0: float, t1: float) -> slice:
        """Row slice of the requests with t0 <= t_s < t1 (rows are time-sorted)."""
        lo, hi = np.searchsorted(self.t_s, [t0, t1], side="left")
        return slice(int(lo), int(hi))

    def _items(self, u: np.ndarray) -> np.ndarray:
        return self.items.sample(u)


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
    if config.compact:
        users = CompactZipf(config.num_users, config.user_zipf, key=_law_key(config.seed, _USER_LAW_STREAM))
        hot_set = users.id_of_rank(np.arange(config.hot_users, dtype=np.int64))
        background = users.sample(rng.random(n))
    else:
        user_perm = rng.permutation(config.num_users).astype(np.int64)
        hot_set = user_perm[: config.hot_users]
        user_cdf = zipf_cdf(config.num_users, config.user_zipf)
        background = user_perm[np.minimum(np.searchsorted(user_cdf, rng.random(n), side="right"), config.num_users - 1)]
    is_hot = rng.random(n) < config.hot_share_at(t_s)
    user_id = np.where(is_hot, hot_set[rng.integers(0, config.hot_users, n)], background)
    if config.session_return_share > 0:
        user_id = _continue_sessions(rng, config, t_s, user_id, ~is_hot)

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
    base_len = _base_history_len(rng, config, user_id)
    hist = np.floor(base_len * config.history_scale_at(t_s) + config.history_growth_per_s * (t_s - t_first))
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
    items: ZipfLaw
    if config.compact:
        items = CompactZipf(n_ranked, config.item_zipf, key=_law_key(config.seed, _ITEM_LAW_STREAM), first_id=FIRST_ITEM_ID)
    else:
        item_of_rank = rng.permutation(n_ranked).astype(np.int64) + FIRST_ITEM_ID
        items = TableZipf(zipf_cdf(n_ranked, config.item_zipf), item_of_rank)
    return Trace(
        config=config,
        t_s=t_s,
        user_id=user_id,
        history_len=history_len,
        prev_len=prev_len,
        since_prev_s=since_prev_s,
        items=items,
    )


def _law_key(seed: int, stream: int) -> int:
    """The key of a compact law: a hash of (seed, stream), so laws of different seeds differ."""
    return int(splitmix64(np.uint64(seed & 0xFFFFFFFF) * np.uint64(1 << 8) + np.uint64(stream)))


def _continue_sessions(
    rng: np.random.Generator, config: TraceConfig, t_s: np.ndarray, user_id: np.ndarray, background: np.ndarray
) -> np.ndarray:
    """Reassign background requests that continue a session to the user of their session (module docstring).

    Each continuing request points at the latest background request one gap before it; following
    the pointers to a request that starts a session (pointer doubling, O(n log depth)) gives
    every request of a session the user drawn for its first one.
    """
    rows = np.flatnonzero(background)
    t_bg = t_s[rows]
    m = rows.shape[0]
    own = np.arange(m)
    continues = rng.random(m) < config.session_return_share
    gap = session_gap_s(config.session_gap_quantiles_s, rng.random(m))
    target = t_bg - gap
    parent = np.searchsorted(t_bg, target, side="right") - 1  # latest background request at or before target
    parent = np.where(continues & (target >= 0.0) & (parent >= 0) & (parent < own), parent, own)
    while True:
        hop = parent[parent]
        if np.array_equal(hop, parent):
            break
        parent = hop
    out = user_id.copy()
    out[rows] = user_id[rows][parent]
    return out


def session_gap_s(quantiles_s: tuple[float, ...], u: np.ndarray) -> np.ndarray:
    """In-session gaps (s) drawn by uniforms `u` from evenly spaced quantiles, log-linear between them."""
    q = np.asarray(quantiles_s, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, q.shape[0])
    return np.exp(np.interp(u, levels, np.log(q)))


def _base_history_len(rng: np.random.Generator, config: TraceConfig, user_id: np.ndarray) -> np.ndarray:
    """Each request's user's base history length (float, >= 1), with mean `mean_history_len` before capping.

    Paper (table laws): one draw per user from `rng`. Compact: a pure function of (seed, user id),
    so no array is sized by num_users.
    """
    mean = config.mean_history_len
    sigma = config.history_log_sigma
    mu = np.log(mean) - sigma * sigma / 2.0  # lognormal with this mean
    if not config.compact:
        if config.history_law == "geometric":
            return np.maximum(1.0, rng.geometric(1.0 / mean, config.num_users))[user_id]
        return np.maximum(1.0, rng.lognormal(mu, sigma, config.num_users))[user_id]
    stream = config.seed * 4 + _BASE_LEN_STREAM
    u1 = _uniform(stream, user_id, np.zeros_like(user_id))
    if config.history_law == "geometric":
        return np.maximum(1.0, np.ceil(np.log1p(-u1) / np.log1p(-1.0 / mean))) if mean > 1 else np.ones(user_id.shape)
    u2 = _uniform(stream, user_id, np.ones_like(user_id))
    z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)  # Box-Muller: standard normal
    return np.maximum(1.0, np.exp(mu + sigma * z))


# The named workloads: `regime_config(..., workload=name)` starts from these (per node, scale 1).
PAPER = TraceConfig()
PRODUCTION = TraceConfig(
    num_users=prod.DLRMV3_USERS // prod.DLRMV3_REFERENCE_GPUS,
    num_items=prod.PRODUCTION_ITEMS + FIRST_ITEM_ID,
    user_zipf=prod.ML_USER_ACTIVITY_ZIPF,
    item_zipf=TraceConfig.item_zipf,  # the paper's; MovieLens' 1.4 is a 1,682-movie head (docs/workload.md)
    hot_users=TraceConfig.hot_users,
    hot_user_share=TraceConfig.hot_user_share,
    mean_history_len=prod.DLRMV3_MEAN_HISTORY_LEN,
    history_law="lognormal",
    history_log_sigma=prod.ML_HISTORY_LOG_SIGMA,
    max_history_len=prod.DLRMV3_MAX_HISTORY_LEN,
    history_growth_per_s=1.0 / prod.ML_INTRA_SESSION_GAP_MEDIAN_S,  # about one event per in-session return
    arrival_rate=prod.arrival_rate(),
    candidates=prod.DLRMV3_CANDIDATES,
    duration_s=180.0,
    trend_period_s=180.0,
    burst_start_s=60.0,
    burst_every_s=60.0,
    burst_len_s=20.0,
    compact=True,
    session_return_share=prod.ML_SESSION_RETURN_SHARE,
    session_gap_quantiles_s=prod.ML_INTRA_SESSION_GAP_QUANTILES_S,
)
WORKLOADS: dict[str, TraceConfig] = {"paper": PAPER, "production": PRODUCTION}


def regime_config(regime: str, seed: int, scale: float = 1.0, workload: str = "paper", **overrides: object) -> TraceConfig:
    """The standard config of a regime in a named workload; `scale` multiplies users, hot set and
    arrival rate (node count)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {tuple(WORKLOADS)}, got {workload!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    base = WORKLOADS[workload]
    cfg = dataclasses.replace(
        base,
        regime=regime,
        seed=seed,
        num_users=max(1, int(round(base.num_users * scale))),
        hot_users=max(1, int(round(base.hot_users * scale))),
        arrival_rate=base.arrival_rate * scale,
    )
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def make_trace(regime: str, seed: int, scale: float = 1.0, workload: str = "paper", **overrides: object) -> Trace:
    """A seeded trace of a standard regime: `make_trace("burst", seed=3, duration_s=60.0)`,
    `make_trace("steady", seed=0, scale=32, workload="production")`."""
    return generate(regime_config(regime, seed, scale, workload, **overrides))
