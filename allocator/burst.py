"""Burst-aware recovery: a two-sided-safe CUSUM on hot-user share and arrival rate.

A burst (a live event: many requests from few users, at a higher rate) makes
KV prefixes suddenly more valuable and pushes the node toward overload. The
base policy reacts too, but through a slew-limited path; the detector lets the
controller jump straight to a safe alpha in the interval the burst is seen,
and hands control back once both signals are back at their baseline.

Detection: for each signal x, a one-sided (upward) CUSUM of standardised
excess, s = max(0, s + (x - mu) / sigma - drift), alarms when s > threshold
(Page 1954). mu and sigma are slow EWMAs learned only while no burst is on, so
a burst does not teach the detector that bursts are normal. Recovery: after
at least `min_hold` intervals, the burst ends when both signals have been
within `release_sigmas` of baseline for `calm_intervals` in a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BurstConfig:
    """Detector sensitivity and hand-back rules."""

    # A burst moves hot share or rate by tens of sigmas in one interval; a Trend drifts by a
    # fraction of a sigma per interval. The slack absorbs the baseline's lag behind a drift
    # (about slope / ewma), the threshold ignores a single noisy window.
    drift: float = 3.0  # CUSUM slack, in baseline sigmas
    threshold: float = 8.0  # CUSUM alarm level, in baseline sigmas
    ewma: float = 0.05  # baseline learning rate per calm interval
    warmup_intervals: int = 8  # intervals that only learn the baseline (a burst inside them is missed)
    min_hold: int = 3  # intervals a burst lasts at least
    calm_intervals: int = 3  # calm intervals in a row that end a burst
    release_sigmas: float = 2.0
    min_rel_sigma: float = 0.02  # sigma floor, relative to the mean (a constant signal has sigma 0)

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.drift < 0 or not 0 < self.ewma < 1:
            raise ValueError("BurstConfig needs threshold > 0, drift >= 0, 0 < ewma < 1")
        if self.warmup_intervals < 2 or self.min_hold < 1 or self.calm_intervals < 1:
            raise ValueError("BurstConfig needs warmup_intervals >= 2, min_hold >= 1, calm_intervals >= 1")


class _Cusum:
    """Upward CUSUM of one signal against its EWMA baseline."""

    def __init__(self, config: BurstConfig) -> None:
        self.config = config
        self.mean = 0.0
        self.var = 0.0
        self.n = 0
        self.s = 0.0

    def score(self, x: float) -> float:
        """Standardised excess of x over the baseline."""
        sigma = max(math.sqrt(self.var), self.config.min_rel_sigma * abs(self.mean), 1e-12)
        return (x - self.mean) / sigma

    def learn(self, x: float) -> None:
        self.n += 1
        if self.n == 1:
            self.mean = x
            return
        a = max(self.config.ewma, 1.0 / self.n)  # plain mean while warming up
        d = x - self.mean
        self.mean += a * d
        self.var = (1.0 - a) * (self.var + a * d * d)

    def push(self, x: float) -> bool:
        z = self.score(x)
        self.s = max(0.0, self.s + z - self.config.drift)
        return self.s > self.config.threshold


class BurstDetector:
    """`update(hot_share, rate)` once per interval -> True while a burst is on."""

    def __init__(self, config: BurstConfig = BurstConfig()) -> None:
        self.config = config
        self._signals = (_Cusum(config), _Cusum(config))
        self.active = False
        self._held = 0
        self._calm = 0
        self.bursts = 0  # bursts detected so far

    def update(self, hot_user_share: float, request_rate: float) -> bool:
        # Spelled out for the two signals (no zip/any/all): this runs inside every decide().
        cfg = self.config
        hot, rate = self._signals
        if hot.n < cfg.warmup_intervals:
            hot.learn(hot_user_share)
            rate.learn(request_rate)
            return False
        if not self.active:
            hot_alarm = hot.push(hot_user_share)  # both CUSUMs advance every interval
            rate_alarm = rate.push(request_rate)
            if hot_alarm or rate_alarm:
                self.active = True
                self.bursts += 1
                self._held = 0
                self._calm = 0
            else:
                hot.learn(hot_user_share)
                rate.learn(request_rate)
            return self.active
        self._held += 1
        calm = hot.score(hot_user_share) < cfg.release_sigmas and rate.score(request_rate) < cfg.release_sigmas
        self._calm = self._calm + 1 if calm else 0
        if self._held >= cfg.min_hold and self._calm >= cfg.calm_intervals:
            self.active = False
            hot.s = 0.0
            rate.s = 0.0
        return self.active
