"""`helmrec train-allocator`: train the PPO base policy offline on the node simulator, export numpy weights.

Training data: window tables (`node_model.build_table`) of all three regimes on
the training seeds; evaluation uses other seeds (`allocator/evaluate.py`).
The reward is the latency regret against the window's best alpha plus a
shaping term toward alpha* (offline only; see `NodeEnv`). Decisions hardly
affect later windows (only through the carried backlog), so a short discount
(gamma 0.5) keeps the value targets low-variance.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from helmrec.allocator.node_model import NodeConfig, WindowTable, build_table
from helmrec.allocator.oracle import alpha_star
from helmrec.allocator.policy import DEFAULT_POLICY
from helmrec.allocator.sim_env import NodeEnv
from helmrec.workload.traces import REGIMES, make_trace

TRAIN_SEEDS = (0, 1, 2)


def training_tables(
    seeds: tuple[int, ...] = TRAIN_SEEDS, duration_s: float = 600.0, node: NodeConfig = NodeConfig()
) -> list[WindowTable]:
    """One window table per (regime, seed)."""
    return [build_table(make_trace(r, seed, duration_s=duration_s), node) for r in REGIMES for seed in seeds]


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timesteps", type=int, default=600_000, help="PPO environment steps (default 600000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_POLICY, help=f"numpy policy file (default {DEFAULT_POLICY})")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of each training trace")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from helmrec.allocator.export import export_policy

    t0 = time.perf_counter()
    tables = training_tables(duration_s=args.duration)
    print(f"built {len(tables)} window tables ({sum(t.num_windows for t in tables)} windows) in {time.perf_counter() - t0:.1f} s")
    constants = fit_constants(tables)
    print("fitted " + ", ".join(f"{k} = {v:.3f}" for k, v in constants.items()))
    model = train(tables, args.timesteps, seed=args.seed)
    extra = {"meta_timesteps": args.timesteps, "meta_train_seeds": np.array(TRAIN_SEEDS), **constants}
    path = export_policy(model, args.out, extra=extra)
    print(f"exported {path} ({path.stat().st_size} bytes) after {time.perf_counter() - t0:.0f} s")
    return 0
