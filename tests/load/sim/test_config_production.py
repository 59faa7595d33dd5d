"""The production node: an H200 pool for the `large` preset, its SLO, and trace timing the lead can wire."""

from __future__ import annotations

import dataclasses

import pytest

from helmrec.allocator.cost_model import CostModel
from helmrec.allocator.observation import KV_LOOKBACK_S
from helmrec.load.sim.config import H200_HBM_BYTES, LARGE_EMB_ROW_BYTES, LARGE_KV_TOKEN_BYTES, SimConfig, production_node
from helmrec.workload.traces import PRODUCTION, regime_config


def test_production_sizing() -> None:
    sim = SimConfig.production()
    assert sim.nodes == 32 and sim.workload == "production" and sim.slo_ms == 80.0
    assert sim.page_bytes == 2**20 and sim.node.cost.kv_token_bytes == 10 * 1024 and sim.node.cost.emb_row_bytes == 1024
    assert LARGE_KV_TOKEN_BYTES == 10240 and LARGE_EMB_ROW_BYTES == 1024
    pool = sim.node.pool_bytes
    assert pool < H200_HBM_BYTES
    # The item table (50M rows) does not fit beside a useful KV share: EMB misses matter.
    table = (PRODUCTION.num_items - 1) * LARGE_EMB_ROW_BYTES
    assert 0.3 * pool < table < pool
    # Bursts outlast the lookback, after the unmeasured lead-in; windows are the policy's 1 s.
    assert sim.burst_len_s >= KV_LOOKBACK_S and sim.burst_start_s >= sim.warmup_s and sim.interval_s == 1.0
    assert sim.windows == int((PRODUCTION.duration_s - sim.warmup_s) // 1.0)
    assert SimConfig.production(nodes=4).nodes == 4
    assert SimConfig().workload == "paper"


def test_trace_timing_from_the_sim_config_matches_the_workload() -> None:
    sim = SimConfig.production(nodes=2)
    cfg = regime_config(
        "burst", sim.seed, scale=sim.nodes, workload=sim.workload, duration_s=sim.duration_s,
        burst_every_s=sim.burst_every_s, burst_len_s=sim.burst_len_s, burst_start_s=sim.burst_start_s,
    )
    assert cfg == regime_config("burst", sim.seed, scale=2, workload="production")


def test_production_node_keeps_a_given_cost_models_timings() -> None:
    node = production_node()
    assert node.warmup_s == 60.0 and node.interval_s == 1.0
    timing = next(f.name for f in dataclasses.fields(CostModel) if f.name.endswith("_us"))
    measured = dataclasses.replace(CostModel(), **{timing: getattr(CostModel(), timing) + 1.0}, emb_row_bytes=512)
    node = production_node(measured)
    assert getattr(node.cost, timing) == getattr(measured, timing) and node.cost.emb_row_bytes == LARGE_EMB_ROW_BYTES
    with pytest.raises(ValueError, match="workload"):
        SimConfig(workload="huge")
