"""Online residual adapter: a small, bounded correction to the base policy, learned from latency.

The base policy was trained on a simulator; the real node's latency curve
differs from it by some bias. The adapter estimates the sign of d(P99)/d(alpha)
online by paired probes — alpha + probe for one interval, alpha - probe for
the next, once every `probe_every` intervals — and moves its offset one `step`
against that sign once the evidence is significant. What keeps it from hurting
a workload the base policy already serves well (Steady):

- it starts at zero and is clipped to +/- `bound`;
- it moves only when the mean relative P99 difference of at least `min_pairs`
  probe pairs is `z` standard errors away from zero (a sequential test), then
  starts a new test. Window-to-window P99 noise (1-2% here) therefore averages
  out instead of random-walking the offset; near a flat optimum, where the
  slope is below what the probes can resolve, the offset stays put — and
  there being off costs almost no latency;
- probing costs little: two probes of `probe` every `probe_every` intervals.

The controller freezes it (`hold`) while a burst is on: a P99 change caused
by a load spike says nothing about the slope in alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ResidualConfig:
    """Bounds, probing and test settings of the residual adapter."""

    bound: float = 0.05  # |offset| never exceeds this
    probe: float = 0.01  # alpha perturbation of a probe interval
    probe_every: int = 20  # one +probe/-probe pair per this many intervals
    step: float = 0.01  # offset change per significant test
    min_pairs: int = 6  # probe pairs a test needs before it may decide
    z: float = 3.0  # standard errors the mean difference must reach

    def __post_init__(self) -> None:
        if not 0.0 <= self.probe <= self.bound <= 0.5:
            raise ValueError(f"ResidualConfig needs 0 <= probe <= bound <= 0.5, got probe={self.probe}, bound={self.bound}")
        if self.probe_every < 3:
            raise ValueError(f"ResidualConfig.probe_every must be >= 3 (a pair plus a settle interval), got {self.probe_every}")
        if self.step < 0 or self.z <= 0 or self.min_pairs < 2:
            raise ValueError("ResidualConfig needs step >= 0, z > 0 and min_pairs >= 2")


class ResidualAdapter:
    """Offset in [-bound, bound] plus this interval's probe; `update` once per control interval."""

    def __init__(self, config: ResidualConfig = ResidualConfig()) -> None:
        self.config = config
        self.offset = 0.0
        self.steps = 0  # significant tests so far
        self._phase = 0  # interval index within the probe cycle
        self._p99_plus = 0.0
        self._n = 0
        self._sum = 0.0
        self._sum2 = 0.0

    def update(self, p99_ms: float) -> float:
        """Learn from the P99 of the interval that just ended; return the correction for the next one.

        Phase 0 applies +probe, phase 1 applies -probe; the observation arriving in phase 1 is the
        +probe interval's P99, the one arriving in phase 2 is the -probe interval's.
        """
        cfg = self.config
        phase = self._phase
        if phase == 1:
            self._p99_plus = p99_ms
        elif phase == 2:
            denom = 0.5 * (self._p99_plus + p99_ms)
            if denom > 0.0:
                self._record((self._p99_plus - p99_ms) / denom)  # > 0: more alpha was slower
        self._phase = (phase + 1) % cfg.probe_every
        if self._phase == 1:
            return self.offset + cfg.probe
        if self._phase == 2:
            return self.offset - cfg.probe
        return self.offset

    def hold(self) -> float:
        """Return the offset without probing or learning; restart the probe cycle and the test."""
        self._phase = 0
        self._n, self._sum, self._sum2 = 0, 0.0, 0.0
        return self.offset

    def _record(self, diff: float) -> None:
        cfg = self.config
        self._n += 1
        self._sum += diff
        self._sum2 += diff * diff
        if self._n < cfg.min_pairs:
            return
        mean = self._sum / self._n
        var = max(self._sum2 / self._n - mean * mean, 0.0) * self._n / (self._n - 1)
        if abs(mean) * math.sqrt(self._n) <= cfg.z * math.sqrt(var) + 1e-15:
            return
        self.offset = min(max(self.offset - math.copysign(cfg.step, mean), -cfg.bound), cfg.bound)
        self.steps += 1
        self._n, self._sum, self._sum2 = 0, 0.0, 0.0
