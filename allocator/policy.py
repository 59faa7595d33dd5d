"""The base policy at run time: a numpy forward pass of the exported PPO actor.

No torch, no stable-baselines3: SB3's `predict` costs hundreds of
microseconds per call, this costs a few. The features come from the one
feature map (`observation.unscaled_features`, written into a preallocated
buffer), its fixed scaling is folded into the first layer at load time
(W1' = W1 / scale, b1' = b1 - W1' shift), each layer's bias rides in its weight
matrix against a constant 1 at the end of its input buffer, and the action
goes through the one action map (`action.alpha_from_action`). Per call: three
small matrix-vector products and two tanh, no allocation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helmrec.allocator.action import alpha_from_action
from helmrec.allocator.observation import FEATURE_SCALE, FEATURE_SHIFT, OBS_DIM, Observation, unscaled_features
from helmrec.resources import default_policy

DEFAULT_POLICY = default_policy()


def _with_bias(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[out, in + 1]: `w` with the bias as its last column (the input buffer ends in a constant 1)."""
    return np.ascontiguousarray(np.concatenate([w, np.asarray(b, dtype=np.float64).reshape(-1, 1)], axis=1))


def _buffer(n: int) -> np.ndarray:
    """n values and a constant 1 after them (the bias input of the next layer)."""
    out = np.zeros(n + 1)
    out[n] = 1.0
    return out


class Policy:
    """Deterministic actor: observation -> alpha target in [alpha_min, alpha_max]."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        for key in ("w1", "b1", "w2", "b2", "w3", "b3", "feature_shift", "feature_scale", "alpha_range"):
            if key not in weights:
                raise ValueError(f"policy weights lack '{key}'")
        if not (np.allclose(weights["feature_shift"], FEATURE_SHIFT) and np.allclose(weights["feature_scale"], FEATURE_SCALE)):
            raise ValueError(
                "policy feature_shift/feature_scale differ from helmrec.allocator.observation's: retrain or re-export"
            )
        w1 = np.asarray(weights["w1"], dtype=np.float64)
        if w1.shape[1] != OBS_DIM or weights["w3"].shape[0] != 1:
            raise ValueError(f"policy w1 must be [h, {OBS_DIM}] and w3 [1, h], got {w1.shape}, {weights['w3'].shape}")
        w1 = w1 / FEATURE_SCALE[None, :]
        self.w1 = _with_bias(w1, np.asarray(weights["b1"], dtype=np.float64) - w1 @ FEATURE_SHIFT)
        self.w2 = _with_bias(np.asarray(weights["w2"], dtype=np.float64), weights["b2"])
        self.w3 = _with_bias(np.asarray(weights["w3"], dtype=np.float64), weights["b3"])[0]
        self.alpha_min, self.alpha_max = (float(v) for v in weights["alpha_range"])
        self.extra = {k: v for k, v in weights.items() if k.startswith("meta_")}
        self._x = _buffer(OBS_DIM)
        self._h1 = _buffer(self.w1.shape[0])
        self._h2 = _buffer(self.w2.shape[0])
        # Views of the buffers without their constant 1: where features and activations are written.
        self._features = self._x[:OBS_DIM]
        self._h1_out = self._h1[:-1]
        self._h2_out = self._h2[:-1]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        """Load `path`, or the trained policy.npz shipped inside the package."""
        with np.load(Path(path) if path is not None else DEFAULT_POLICY) as data:
            return cls({k: data[k] for k in data.files})

    def action(self, obs: Observation) -> float:
        """The actor's action in [-1, 1] for `obs` (what SB3's `predict` returns for `features(obs)`)."""
        unscaled_features(obs, self._features)
        self.w1.dot(self._x, out=self._h1_out)  # the method skips np.dot's dispatch: ~1 us of ~5 here
        np.tanh(self._h1_out, out=self._h1_out)
        self.w2.dot(self._h1, out=self._h2_out)
        np.tanh(self._h2_out, out=self._h2_out)
        a = float(self.w3.dot(self._h2))
        return -1.0 if a < -1.0 else (1.0 if a > 1.0 else a)  # SB3's predict clips to the action box

    def alpha(self, obs: Observation) -> float:
        """The alpha target for the next interval."""
        return alpha_from_action(self.action(obs), self.alpha_min, self.alpha_max)
