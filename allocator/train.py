"""Train the PPO base policy offline on window tables and fit the constants shipped beside it.

`helmrec train-allocator` (`helmrec.load.sim.train_allocator`) builds the
tables by replaying the cluster simulator's own node on all three regimes of
the training seeds and calls `train` here; evaluation uses other seeds. This
module takes tables of either kind and knows nothing of how they were made.
The reward is the latency regret against the window's best alpha plus a
shaping term toward alpha* (offline only; see `NodeEnv`). Decisions hardly
affect later windows (a replayed table holds each alpha's own queue; only the
analytic table carries a backlog), so a short discount (gamma 0.5) keeps the
value targets low-variance.
"""

from __future__ import annotations

import numpy as np

from helmrec.allocator.node_model import NodeConfig, WindowTable
from helmrec.allocator.oracle import alpha_star
from helmrec.allocator.sim_env import NodeEnv

TRAIN_SEEDS = (0, 1, 2)


def fit_constants(tables: list[WindowTable], node: NodeConfig = NodeConfig()) -> dict[str, float]:
    """Constants the run-time layers take from the training data, shipped inside policy.npz.

    meta_burst_alpha: the burst layer's safe-side cap, the 90th percentile of alpha* over burst
    windows (the EMB share that is enough for nine bursts in ten);
    meta_pid_setpoint: the PID baseline's EMB hit-rate target, the mean EMB hit rate at alpha*.
    """
    burst, hits = [], []
    for table in tables:
        star = alpha_star(table, node)
        burst.append(star[table.in_burst])
        hits.append(table.emb_hit[np.arange(table.num_windows), np.round(star * 100).astype(int)])
    burst_all = np.concatenate(burst)
    if burst_all.size == 0:
        raise ValueError("fit_constants needs at least one table with burst windows")
    return {"meta_burst_alpha": float(np.percentile(burst_all, 90)), "meta_pid_setpoint": float(np.concatenate(hits).mean())}


def train(
    tables: list[WindowTable],
    timesteps: int,
    seed: int = 0,
    progress_bar: bool = True,
    node: NodeConfig = NodeConfig(),
    episode_windows: int = 128,
):
    """Train SB3 PPO (MlpPolicy, 2x64 tanh) on `tables`; returns the model."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    env = make_vec_env(lambda: NodeEnv(tables, node, episode_windows), n_envs=4, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=256,
        batch_size=256,
        n_epochs=10,
        # Linear decay to zero: the deterministic mean must settle to ~0.01 in alpha, finer than
        # what a constant step size lets PPO resolve.
        learning_rate=lambda progress_remaining: 1e-3 * progress_remaining,
        gamma=0.5,
        gae_lambda=0.9,
        ent_coef=0.0,
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh, log_std_init=-1.5),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.learn(total_timesteps=timesteps, progress_bar=progress_bar)
    return model
