"""Online residual adapter: a small, bounded correction to the base policy, learned from latency.

The base policy was trained on a simulator; the real node's latency curve
differs by some bias. The adapter estimates the sign of d(P99)/d(alpha)
online by paired probes — alpha + probe for one interval, alpha - probe for
the next, once every `probe_every` intervals — and moves its offset one
`step` against that sign. Three things keep it from hurting a workload the
base policy already serves well (Steady):

- it starts at zero and is clipped to +/- `bound`;
- it only moves when the paired P99 difference exceeds `deadband` (relative),
  so window-to-window noise on a flat optimum cancels instead of accumulating;
- probing costs little: 2 probes of `probe` every `probe_every` intervals.

The controller freezes it (`hold`) while a burst is detected: a P99 change
caused by a load spike says nothing about the slope in alpha.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResidualConfig:
    """Bounds and learning rate of the residual adapter."""

    bound: float = 0.05  # |offset| never exceeds this
    probe: float = 0.01  # alpha perturbation of a probe interval
    probe_every: int = 20  # one +probe/-probe pair per this many intervals
    step: float = 0.005  # offset change per significant probe pair
    deadband: float = 0.02  # relative P99 difference a pair must show to count

    def __post_init__(self) -> None:
        if not 0.0 <= self.probe <= self.bound <= 0.5:
            raise ValueError(f"ResidualConfig needs 0 <= probe <= bound <= 0.5, got probe={self.probe}, bound={self.bound}")
        if self.probe_every < 3:
            raise ValueError(f"ResidualConfig.probe_every must be >= 3 (a pair plus a settle interval), got {self.probe_every}")
        if self.step < 0 or self.deadband < 0:
            raise ValueError("ResidualConfig.step and deadband must be >= 0")


class ResidualAdapter:
    """Offset in [-bound, bound] plus this interval's probe; `update` once per control interval."""

    def __init__(self, config: ResidualConfig = ResidualConfig()) -> None:
        self.config = config
        self.offset = 0.0
        self._phase = 0  # interval index within the probe cycle
        self._p99_plus = 0.0

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
                rel = (self._p99_plus - p99_ms) / denom  # > 0: more alpha was slower
                if rel > cfg.deadband:
                    self.offset = max(self.offset - cfg.step, -cfg.bound)
                elif rel < -cfg.deadband:
                    self.offset = min(self.offset + cfg.step, cfg.bound)
        self._phase = (phase + 1) % cfg.probe_every
        if self._phase == 1:
            return self.offset + cfg.probe
        if self._phase == 2:
            return self.offset - cfg.probe
        return self.offset

    def hold(self) -> float:
        """Return the offset without probing or learning, and restart the probe cycle."""
        self._phase = 0
        return self.offset
