"""The exported numpy policy is the SB3 actor: same deterministic actions, no torch at run time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from helmrec.allocator.action import alpha_from_action
from helmrec.allocator.controller import Controller, ControllerConfig
from helmrec.allocator.export import export_policy
from helmrec.allocator.node_model import NodeConfig, build_table
from helmrec.allocator.observation import Observation, features
from helmrec.allocator.policy import DEFAULT_POLICY, Policy
from helmrec.allocator.sim_env import NodeEnv
from helmrec.allocator.train import train
from helmrec.workload.traces import make_trace

NODE = NodeConfig(warmup_s=20.0, sample_requests=1000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tables = [build_table(make_trace("trend", seed=5, duration_s=60.0), NODE)]
    model = train(tables, timesteps=512, progress_bar=False, node=NODE, episode_windows=16)
    path = export_policy(model, tmp_path_factory.mktemp("policy") / "policy.npz", NODE)
    return model, Policy.load(path), tables


def _sample_observations(n: int) -> list[Observation]:
    rng = np.random.default_rng(0)
    return [
        Observation(
            emb_hit_rate=float(rng.uniform()), kv_hit_rate=float(rng.uniform()), hot_user_share=float(rng.uniform(0, 0.8)),
            mean_history_len=float(rng.uniform(10, 4000)), request_rate=float(rng.uniform(0, 3000)),
            queue_depth=float(rng.exponential(20)), alpha=float(rng.uniform()), p99_ms=float(rng.exponential(10)),
            kv_hit_rate_more=float(rng.uniform()), kv_hit_rate_less=float(rng.uniform()),
        )
        for _ in range(n)
    ]


def test_numpy_forward_equals_sb3_predict(trained) -> None:
    model, policy, _ = trained
    for obs in _sample_observations(64):
        expected, _ = model.predict(features(obs), deterministic=True)
        got = policy.action(obs)
        assert got == pytest.approx(float(expected[0]), abs=1e-5)
        assert policy.alpha(obs) == pytest.approx(alpha_from_action(float(expected[0]), NODE.alpha_min, NODE.alpha_max), abs=1e-5)


def test_env_observations_round_trip(trained) -> None:
    model, policy, tables = trained
    env = NodeEnv(tables, NODE, episode_windows=16)
    obs, _ = env.reset(seed=3)
    for _ in range(10):
        action, _ = model.predict(obs, deterministic=True)
        obs, *_ = env.step(action)
        assert np.isfinite(obs).all()


def test_packaged_policy_loads_without_torch_or_sb3() -> None:
    assert DEFAULT_POLICY.exists(), "allocator/policy.npz must be committed (helmrec train-allocator)"
    code = (
        "import sys; from helmrec.allocator.controller import Controller; from helmrec.allocator.observation import Observation;"
        "c = Controller.load(); a = c.decide(Observation(0.9, 0.3, 0.2, 1000.0, 1700.0, 1.0, 0.5, 5.0, 0.35, 0.27));"
        "assert 0.0 <= a <= 1.0, a;"
        "bad = [m for m in ('torch', 'stable_baselines3') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(DEFAULT_POLICY.parents[1]))


def test_stale_policy_file_fails_loudly(tmp_path) -> None:
    with np.load(DEFAULT_POLICY) as data:
        weights = {k: data[k] for k in data.files}
    weights["feature_scale"] = weights["feature_scale"] * 2
    np.savez(tmp_path / "stale.npz", **weights)
    with pytest.raises(ValueError, match="feature_shift/feature_scale"):
        Policy.load(tmp_path / "stale.npz")
    del weights["w3"]
    np.savez(tmp_path / "broken.npz", **weights)
    with pytest.raises(ValueError, match="w3"):
        Controller.load(tmp_path / "broken.npz", ControllerConfig())
