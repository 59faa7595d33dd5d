"""Node simulator and oracle: a valid gymnasium env, and alpha* is the true minimum of the sweep."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from helmrec.allocator.node_model import ALPHA_GRID, NodeConfig, NodeState, build_table, step_node
from helmrec.allocator.observation import OBS_DIM, Observation, features
from helmrec.allocator.oracle import alpha_star, smoothed_p99
from helmrec.allocator.sim_env import NodeEnv
from helmrec.workload.traces import make_trace

NODE = NodeConfig(warmup_s=20.0)  # default request sample: the oracle test checks its 1% claim


@pytest.fixture(scope="module")
def tables():
    return [build_table(make_trace(r, seed=7, duration_s=60.0, burst_every_s=40.0, burst_len_s=8.0), NODE)
            for r in ("steady", "burst")]


def test_env_passes_gymnasium_checker(tables) -> None:
    env = NodeEnv(tables, NODE, episode_windows=16)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (OBS_DIM,) and obs.dtype == np.float32
    _, reward, terminated, truncated, info = env.step(np.array([0.0], dtype=np.float32))
    assert reward <= 0.0 and not terminated and 0.0 <= info["alpha_star"] <= 1.0


def test_oracle_is_the_sweep_minimum(tables) -> None:
    for table in tables:
        star = alpha_star(table, NODE)
        smooth = smoothed_p99(table)
        allowed = (ALPHA_GRID >= NODE.alpha_min) & (ALPHA_GRID <= NODE.alpha_max)
        for w in range(table.num_windows):
            i = int(round(star[w] * 100))
            assert NODE.alpha_min <= star[w] <= NODE.alpha_max
            assert smooth[w, i] == pytest.approx(smooth[w, allowed].min())
            # The smoothed optimum is also near-optimal on the raw curve.
            assert table.p99_ms[w, i] <= table.p99_ms[w, allowed].min() * 1.02
        # Sweeping alpha through step_node (interpolation included) never beats alpha* by > 1%.
        w = table.num_windows // 2
        sweep = [step_node(table, w, NodeState(alpha=float(a))).p99_ms for a in np.linspace(0.02, 0.98, 97)]
        assert min(sweep) >= table.p99_ms[w, int(round(star[w] * 100))] * 0.99


def test_caches_trade_off_in_the_expected_direction(tables) -> None:
    table = tables[0]
    emb = table.emb_hit.mean(axis=0)
    kv = table.kv_hit.mean(axis=0)
    assert np.all(np.diff(emb) >= -1e-12) and emb[90] > emb[10]  # more EMB pages, more EMB hits
    assert np.all(np.diff(kv) <= 1e-12) and kv[10] > kv[90]  # fewer KV pages, fewer KV hits
    # Both extremes are worse than the optimum: a real trade-off, alpha* strictly inside.
    star = alpha_star(table, NODE)
    assert 0.05 < float(np.median(star)) < 0.95


def test_step_node_observation_follows_the_contract(tables) -> None:
    obs = step_node(tables[1], 3, NodeState(alpha=0.4))
    assert isinstance(obs, Observation) and obs.alpha == pytest.approx(0.4)
    assert obs.request_rate > 0 and obs.p99_ms > 0 and obs.mean_history_len > 0
    assert features(obs).shape == (OBS_DIM,)
    # A tenth of the pool more for KV hits at least as often, a tenth less at most as often.
    assert obs.kv_hit_rate_less <= obs.kv_hit_rate <= obs.kv_hit_rate_more
    assert obs.kv_hit_rate_more - obs.kv_hit_rate_less > 0.0


def test_bad_node_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="pool_bytes"):
        NodeConfig(pool_bytes=0)
    with pytest.raises(ValueError, match="Observation.kv_hit_rate"):
        Observation(0.5, 1.5, 0.1, 100.0, 10.0, 0.0, 0.5, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="Observation.kv_hit_rate_less"):
        Observation(0.5, 0.5, 0.1, 100.0, 10.0, 0.0, 0.5, 1.0, 1.0, -0.1)


def test_simulated_kv_hit_rates_agree_with_an_exact_replay() -> None:
    """Che's approximation (what the policy learns from) against the LRU rule and ghost a node runs."""
    from helmrec.load.sim.replay import FIELDS, compare, replay_kv

    trace = make_trace("trend", 7, duration_s=180.0)
    table = build_table(trace, NODE)
    result = compare(trace, table, 0.5, replay_kv(trace, 0.5, NODE), NODE)
    assert set(result) == set(FIELDS)
    for field in FIELDS:
        assert result[field]["mean_abs_error"] < 0.01, (field, result[field])
    more = result["kv_hit_rate_more"]["replay_mean"] - result["kv_hit_rate"]["replay_mean"]
    less = result["kv_hit_rate"]["replay_mean"] - result["kv_hit_rate_less"]["replay_mean"]
    assert more > 0.01 and less > 0.01  # the neighbouring sizes do differ, so the agreement means something


def test_counted_kv_rates_scatter_around_the_table_and_stay_nested(tables) -> None:
    """With an rng the node counts its lookback's requests: binomial scatter, never less > hit > more."""
    table, w = tables[1], 5
    expected = step_node(table, w, NodeState(alpha=0.4))
    rng = np.random.default_rng(0)
    draws = np.array([
        (o.kv_hit_rate_less, o.kv_hit_rate, o.kv_hit_rate_more)
        for o in (step_node(table, w, NodeState(alpha=0.4, rng=rng)) for _ in range(400))
    ])
    assert np.all(draws[:, 0] <= draws[:, 1]) and np.all(draws[:, 1] <= draws[:, 2])
    truth = np.array([expected.kv_hit_rate_less, expected.kv_hit_rate, expected.kv_hit_rate_more])
    n = int(table.lookback_requests[w])
    sd = np.sqrt(truth * (1 - truth) / n)
    assert np.all(np.abs(draws.mean(axis=0) - truth) < 4 * sd / np.sqrt(len(draws)) + 1e-9)
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.2)
