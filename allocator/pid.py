"""PID baseline: steer alpha so the EMB row hit rate holds a setpoint.

The classic way to split a cache without a model: pick the hit rate one side
should keep and let a PID move the split. It cannot see that the right
setpoint changes with the workload, which is the point of comparing it with
the learned controller. Its setpoint is fitted at training time — the mean
EMB hit rate at alpha* over the training seeds' windows — and stored in
policy.npz (`meta_pid_setpoint`), so PID gets the same offline data as PPO.
"""

from __future__ import annotations

from dataclasses import dataclass

from helmrec.allocator.observation import Observation


@dataclass(frozen=True)
class PIDConfig:
    """Gains per control interval (alpha change per unit of hit-rate error)."""

    setpoint: float
    kp: float = 0.5
    ki: float = 0.1
    kd: float = 0.0
    alpha_min: float = 0.02
    alpha_max: float = 0.98


class PIDController:
    """alpha <- alpha + kp e + ki sum(e) + kd de, with e = setpoint - emb_hit_rate (anti-windup by clipping)."""

    def __init__(self, config: PIDConfig) -> None:
        self.config = config
        self._integral = 0.0
        self._last_error: float | None = None

    def decide(self, obs: Observation) -> float:
        cfg = self.config
        error = cfg.setpoint - obs.emb_hit_rate
        self._integral = max(-1.0, min(1.0, self._integral + error))
        de = 0.0 if self._last_error is None else error - self._last_error
        self._last_error = error
        alpha = obs.alpha + cfg.kp * error + cfg.ki * self._integral + cfg.kd * de
        return max(cfg.alpha_min, min(cfg.alpha_max, alpha))
