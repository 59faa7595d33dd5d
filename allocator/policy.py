"""The base policy at run time: a numpy forward pass of the exported PPO actor.

No torch, no stable-baselines3: SB3's `predict` costs hundreds of
microseconds per call, this costs a few. The feature scaling is folded into the
first layer at load time (W1' = W1 / scale, b1' = b1 - W1' shift), every buffer
is preallocated, and the per-call work is three small matrix-vector products.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from helmrec.allocator.observation import FEATURE_SCALE, FEATURE_SHIFT, KV_COLUMN, LESS_COLUMN, LOG_COLUMNS, MORE_COLUMN, OBS_DIM, Observation
from helmrec.resources import default_policy

DEFAULT_POLICY = default_policy()


class Policy:
    """Deterministic actor: observation -> alpha target in [alpha_min, alpha_max]."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        for key in ("w1", "b1", "w2", "b2", "w3", "b3", "feature_shift", "feature_scale", "alpha_range"):
            if key not in weights:
                raise ValueError(f"policy weights lack '{key}'")
        if not (np.allclose(weights["feature_shift"], FEATURE_SHIFT) and np.allclose(weights["feature_scale"], FEATURE_SCALE)):
            raise ValueError("policy feature_shift/feature_scale differ from helmrec.allocator.observation's: retrain or re-export")
        w1 = np.asarray(weights["w1"], dtype=np.float64)
        if w1.shape[1] != OBS_DIM or weights["w3"].shape[0] != 1:
            raise ValueError(f"policy w1 must be [h, {OBS_DIM}] and w3 [1, h], got {w1.shape}, {weights['w3'].shape}")
        self.w1 = np.ascontiguousarray(w1 / FEATURE_SCALE[None, :])
        self.b1 = np.asarray(weights["b1"], dtype=np.float64) - self.w1 @ FEATURE_SHIFT
        self.w2 = np.ascontiguousarray(weights["w2"], dtype=np.float64)
        self.b2 = np.asarray(weights["b2"], dtype=np.float64)
        self.w3 = np.ascontiguousarray(weights["w3"][0], dtype=np.float64)
        self.b3 = float(weights["b3"][0])
        self.alpha_min, self.alpha_max = (float(v) for v in weights["alpha_range"])
        self.extra = {k: v for k, v in weights.items() if k.startswith("meta_")}
        self._x = np.zeros(OBS_DIM)
        self._h1 = np.zeros(self.w1.shape[0])
        self._h2 = np.zeros(self.w2.shape[0])

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Policy":
        """Load `path`, or the trained policy.npz shipped inside the package."""
        with np.load(Path(path) if path is not None else DEFAULT_POLICY) as data:
            return cls({k: data[k] for k in data.files})

    def action(self, raw: np.ndarray) -> float:
        """The actor's action in [-1, 1] for a raw observation array (what SB3 `predict` returns)."""
        x = self._x
        x[:] = raw
        for c in LOG_COLUMNS:
            x[c] = math.log1p(max(x[c], 0.0))
        x[MORE_COLUMN] -= x[KV_COLUMN]
        x[LESS_COLUMN] = x[KV_COLUMN] - x[LESS_COLUMN]
        return self._forward()

    def alpha(self, obs: Observation) -> float:
        """The alpha target for the next interval."""
        x = self._x
        x[0] = obs.emb_hit_rate
        x[1] = obs.kv_hit_rate
        x[2] = obs.hot_user_share
        x[3] = obs.mean_history_len
        x[4] = obs.request_rate
        x[5] = math.log1p(obs.queue_depth)
        x[6] = obs.alpha
        x[7] = math.log1p(obs.p99_ms)
        x[8] = obs.kv_hit_rate_more - obs.kv_hit_rate
        x[9] = obs.kv_hit_rate - obs.kv_hit_rate_less
        a = self._forward()
        return self.alpha_min + (a + 1.0) * 0.5 * (self.alpha_max - self.alpha_min)

    def _forward(self) -> float:
        """The MLP on the features in self._x, clipped to the action box as SB3's predict clips."""
        np.dot(self.w1, self._x, out=self._h1)
        self._h1 += self.b1
        np.tanh(self._h1, out=self._h1)
        np.dot(self.w2, self._h1, out=self._h2)
        self._h2 += self.b2
        np.tanh(self._h2, out=self._h2)
        a = float(self.w3.dot(self._h2)) + self.b3
        return -1.0 if a < -1.0 else (1.0 if a > 1.0 else a)
