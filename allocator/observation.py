"""What the controller sees every control interval, and the fixed feature scaling of its policy.

The simulator (`allocator/node_model.py`) and the serving glue (pool stats in
`hstu_pool`) both build an `Observation` with the same definitions, over the
last control window, except the three KV hit rates, which are over the last
KV_LOOKBACK_S (`KVLookback`):

- emb_hit_rate: EMB row hits / row lookups
- kv_hit_rate: requests whose user prefix was reused (fully or partly) / requests
- hot_user_share: share of the window's requests whose user already sent a request
  earlier in the same window
- mean_history_len: mean request history length (tokens)
- request_rate: requests per second
- queue_depth: requests waiting at the node when the window closed
- alpha: the EMB share of the pool during the window
- p99_ms: P99 request latency over the window, milliseconds
- kv_hit_rate_more / kv_hit_rate_less: the KV hit rate the window would have had
  with COUNTERFACTUAL_SHARE of the pool more / less for KV (alpha -/+ that
  share), measured on the node by `helmrec.pool.kv_ghost.KVGhost`
  (ghost entries of recent evictions, LRU stack position of hits)

The last two are what lets a controller tell which way the optimum lies: from
the first eight alone no predictor we could fit gets within 0.02 of alpha* in
every regime (docs/allocator.md, `python -m helmrec.allocator.bound`). What the policy
reads of them is a difference of a few hundredths, so they are counted over
10 s, not one window: over one 1 s window (~1700 requests) binomial noise alone
took the controller's gap from 0.013-0.017 to 0.021-0.025 in the simulator.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

import numpy as np

OBS_DIM = 10
# The span the three KV hit rates are counted over: the simulator's lookback (NodeConfig.lookback_s).
KV_LOOKBACK_S = 10.0
# Windows KVLookback keeps at most, whatever their length (10 ms windows over 10 s).
_MAX_WINDOWS = 1000
# The capacity difference the counterfactual hit rates are measured at: a share of the pool.
COUNTERFACTUAL_SHARE = 0.1
# The policy's input is (unscaled_features(obs) - FEATURE_SHIFT) / FEATURE_SCALE, every feature O(1).
# Fixed constants, not statistics of a training run, so serving and training can never disagree;
# policy.npz stores them too and the runtime checks them on load.
FEATURE_SHIFT = np.array([0.5, 0.5, 0.3, 1000.0, 1000.0, 1.0, 0.5, 1.0, 0.0, 0.0], dtype=np.float64)
FEATURE_SCALE = np.array([0.5, 0.5, 0.3, 1000.0, 1000.0, 2.0, 0.5, 1.0, 0.1, 0.1], dtype=np.float64)


@dataclass(frozen=True)
class Observation:
    """A snapshot of one control window; every field a float (see the module docstring), in the
    order the policy's features take them (`unscaled_features`)."""

    emb_hit_rate: float
    kv_hit_rate: float
    hot_user_share: float
    mean_history_len: float
    request_rate: float
    queue_depth: float
    alpha: float
    p99_ms: float
    kv_hit_rate_more: float
    kv_hit_rate_less: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Observation.{f.name} must be a finite float, got {value!r}")
        for name in ("emb_hit_rate", "kv_hit_rate", "hot_user_share", "alpha", "kv_hit_rate_more", "kv_hit_rate_less"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Observation.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("mean_history_len", "request_rate", "queue_depth", "p99_ms"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"Observation.{name} must be >= 0, got {getattr(self, name)}")


def unscaled_features(obs: Observation, out: np.ndarray) -> np.ndarray:
    """The policy's feature map before its fixed affine scaling, written into `out` ([OBS_DIM] float64).

    The fields in declaration order, except two. Queue depth and P99 enter as log1p: they span
    orders of magnitude in a burst, and a 100x spike must move the MLP's input, not saturate it.
    The counterfactual rates enter as hit-rate gains, (more - kv_hit_rate) and (kv_hit_rate -
    less): a few hundredths, which FEATURE_SCALE scales up to weigh like the other features.
    It allocates nothing, so the run-time actor (`policy.Policy`, the scaling folded into its first
    layer) calls it on every decision; `features` adds the scaling for training.
    """
    out[0] = obs.emb_hit_rate
    out[1] = obs.kv_hit_rate
    out[2] = obs.hot_user_share
    out[3] = obs.mean_history_len
    out[4] = obs.request_rate
    out[5] = math.log1p(obs.queue_depth)
    out[6] = obs.alpha
    out[7] = math.log1p(obs.p99_ms)
    out[8] = obs.kv_hit_rate_more - obs.kv_hit_rate
    out[9] = obs.kv_hit_rate - obs.kv_hit_rate_less
    return out


def features(obs: Observation) -> np.ndarray:
    """The policy's input for `obs` ([OBS_DIM] float32): what PPO trains on and SB3's predict takes."""
    return ((unscaled_features(obs, np.empty(OBS_DIM)) - FEATURE_SHIFT) / FEATURE_SCALE).astype(np.float32)


class KVLookback:
    """The three KV hit rates over the trailing KV_LOOKBACK_S of control windows.

    The node's pool stats are per window; this keeps the last windows' counts
    and sums them over the fewest newest windows that together span at least
    `lookback_s` (all of them until then), as the simulator's observation
    averages over its lookback.
    """

    def __init__(self, lookback_s: float = KV_LOOKBACK_S) -> None:
        if not lookback_s > 0:
            raise ValueError(f"KVLookback.lookback_s must be > 0, got {lookback_s}")
        self.lookback_s = lookback_s
        self._windows: deque[tuple[float, int, int, int, int]] = deque()
        self._sums = [0.0, 0, 0, 0, 0]  # window_s, requests, hits, hits_more, hits_less

    def add(self, window_s: float, requests: int, hits: int, hits_more: int, hits_less: int) -> tuple[float, float, float]:
        """Record one window's counts; returns (kv_hit_rate, kv_hit_rate_more, kv_hit_rate_less)."""
        if not window_s >= 0:
            raise ValueError(f"KVLookback needs window_s >= 0, got {window_s}")
        if not hits_less <= hits <= hits_more <= requests:
            raise ValueError(
                f"KVLookback needs hits_less <= hits <= hits_more <= requests, got {hits_less}, {hits}, {hits_more}, {requests}"
            )
        row = (window_s, requests, hits, hits_more, hits_less)
        self._windows.append(row)
        self._sums = [a + b for a, b in zip(self._sums, row)]
        # Drop the oldest while the rest still covers the lookback (or there are absurdly many:
        # windows of ~0 s must not grow the history without bound).
        while self._sums[0] - self._windows[0][0] >= self.lookback_s or len(self._windows) > _MAX_WINDOWS:
            old = self._windows.popleft()
            self._sums = [a - b for a, b in zip(self._sums, old)]
        n = self._sums[1]
        if n == 0:
            return 0.0, 0.0, 0.0
        return self._sums[2] / n, self._sums[3] / n, self._sums[4] / n
