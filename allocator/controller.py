"""The three-layer alpha controller: frozen PPO base policy, online residual, burst-aware recovery.

`decide(obs)` (the `interface.Decider` protocol) is called once per control
interval by `NodeControl` (inside `hstu_pool`) or by the simulators, and
returns the alpha for the next interval. Composition:

1. base = the numpy PPO actor's alpha target for `obs`;
2. calm: target = base + residual(P99), and alpha moves toward it by at most
   `max_step` per interval — moving alpha moves pool pages (the shrinking
   side evicts, the growing side refills in the background), so the calm path
   never swings the pool on one noisy window;
3. burst (detector on hot share and rate): alpha = min(base, burst_alpha) at
   once, no slew limit, residual frozen; when the detector hands back, the
   calm path resumes from there.

Pure python + numpy on preallocated buffers: a decision is a few microseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from helmrec.allocator.burst import BurstConfig, BurstDetector
from helmrec.allocator.observation import Observation
from helmrec.allocator.policy import Policy
from helmrec.allocator.residual import ResidualAdapter, ResidualConfig

LAYERS = ("ppo", "ppo_residual", "full")


@dataclass(frozen=True)
class ControllerConfig:
    """Which layers run, and their settings."""

    layers: str = "full"  # one of LAYERS
    max_step: float = 0.05  # largest calm-path alpha change per interval
    # Safe side in a burst: at most this EMB share. Bursts are hot users re-sending their
    # histories, so KV is worth more. None: the value fitted at training time and stored in
    # policy.npz (90th percentile of the simulator's alpha* over the training seeds' burst windows).
    burst_alpha: float | None = None
    residual: ResidualConfig = dataclasses.field(default_factory=ResidualConfig)
    burst: BurstConfig = dataclasses.field(default_factory=BurstConfig)

    def __post_init__(self) -> None:
        if self.layers not in LAYERS:
            raise ValueError(f"ControllerConfig.layers must be one of {LAYERS}, got {self.layers!r}")
        if not 0.0 < self.max_step <= 1.0:
            raise ValueError(f"ControllerConfig.max_step must be in (0, 1], got {self.max_step}")
        if self.burst_alpha is not None and not 0.0 <= self.burst_alpha <= 1.0:
            raise ValueError(f"ControllerConfig.burst_alpha must be in [0, 1], got {self.burst_alpha}")


class Controller:
    """Stateful alpha controller for one pool."""

    def __init__(self, policy: Policy, config: ControllerConfig = ControllerConfig()) -> None:
        self.policy = policy
        self.config = config
        self.residual = ResidualAdapter(config.residual) if config.layers != "ppo" else None
        self.burst = BurstDetector(config.burst) if config.layers == "full" else None
        if config.burst_alpha is not None:
            self.burst_alpha = config.burst_alpha
        elif "meta_burst_alpha" in policy.extra:
            self.burst_alpha = float(policy.extra["meta_burst_alpha"])
        else:
            raise ValueError("ControllerConfig.burst_alpha is None and the policy file has no meta_burst_alpha")
        self._lo = policy.alpha_min
        self._hi = policy.alpha_max
        self.alpha: float | None = None  # the last decision

    @classmethod
    def load(cls, path: str | Path | None = None, config: ControllerConfig = ControllerConfig()) -> Controller:
        """A controller on the policy file at `path` (default: the packaged, trained policy.npz)."""
        return cls(Policy.load(path), config)

    def decide(self, obs: Observation) -> float:
        """The alpha for the next interval, given the interval that just ended."""
        base = self.policy.alpha(obs)
        current = obs.alpha if self.alpha is None else self.alpha
        if self.burst is not None and self.burst.update(obs.hot_user_share, obs.request_rate):
            if self.residual is not None:
                self.residual.hold()
            alpha = base if base < self.burst_alpha else self.burst_alpha
        else:
            target = base + (self.residual.update(obs.p99_ms) if self.residual is not None else 0.0)
            step = self.config.max_step
            delta = target - current
            alpha = current + (step if delta > step else (-step if delta < -step else delta))
        alpha = self._lo if alpha < self._lo else (self._hi if alpha > self._hi else alpha)
        self.alpha = alpha
        return alpha
