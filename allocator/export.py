"""Export a trained SB3 PPO policy to the numpy weight file that serving loads (`policy.npz`).

Only the deterministic actor is kept: the two tanh hidden layers of the
MlpPolicy's policy net and the action head (the Gaussian's mean). Serving then
needs numpy alone (`allocator/policy.py`), never torch or stable-baselines3.
The file also records the feature scaling and the action-to-alpha map, which
`Policy.load` checks against the code so that a stale file fails loudly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helmrec.allocator.node_model import NodeConfig
from helmrec.allocator.observation import FEATURE_SCALE, FEATURE_SHIFT


def actor_weights(model) -> dict[str, np.ndarray]:
    """Weights of `model.policy`'s actor as float64 arrays (W stored [out, in], as torch does)."""
    import torch

    policy = model.policy
    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    acts = [m for m in policy.mlp_extractor.policy_net if not isinstance(m, torch.nn.Linear)]
    if len(linears) != 2 or not all(isinstance(a, torch.nn.Tanh) for a in acts):
        raise ValueError("export expects MlpPolicy with net_arch pi=[h, h] and Tanh activations")
    out = {}
    for i, layer in enumerate([*linears, policy.action_net], start=1):
        out[f"w{i}"] = layer.weight.detach().cpu().double().numpy()
        out[f"b{i}"] = layer.bias.detach().cpu().double().numpy()
    return out


def export_policy(model, path: str | Path, node: NodeConfig = NodeConfig(), extra: dict | None = None) -> Path:
    """Write `model`'s actor, the feature scaling and the alpha range to `path` (.npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = actor_weights(model)
    arrays.update(
        feature_shift=FEATURE_SHIFT,
        feature_scale=FEATURE_SCALE,
        alpha_range=np.array([node.alpha_min, node.alpha_max]),
        # The observation window the policy was trained on: hot_user_share and the hit rates
        # depend on the window's length, so serving should observe over the same interval.
        meta_interval_s=np.array(node.interval_s),
    )
    for key, value in (extra or {}).items():
        arrays[key] = np.asarray(value)
    np.savez(path, **arrays)
    return path
