"""The policy's action-to-alpha map, the one both sides of training share.

PPO acts in the box [-1, 1]; the pool takes an EMB share in [alpha_min,
alpha_max] (each cache always keeps some pages). Training (`sim_env.NodeEnv`)
and the run-time actor (`policy.Policy`) both go through this function, so the
alpha a trained action means cannot differ between them.
"""

from __future__ import annotations


def alpha_from_action(action: float, alpha_min: float, alpha_max: float) -> float:
    """Map a policy action (clipped to [-1, 1]) linearly onto [alpha_min, alpha_max]."""
    a = -1.0 if action < -1.0 else (1.0 if action > 1.0 else action)
    return alpha_min + (a + 1.0) * 0.5 * (alpha_max - alpha_min)
