"""The production workload's per-node rate is derived from the committed H200 cost table, not from guesses."""

from __future__ import annotations

import numpy as np
import pytest

from helmrec.allocator.cost_model import packaged
from helmrec.load.sim.config import SimConfig
from helmrec.workload import production as prod

GROUP = 32  # hstu_pool's graph_max_batch: the largest group the served path replays


def grouped_ms(kind: str, computed: int, history: int) -> float:
    """Per-request ms of `kind` at `history` tokens and DLRMv3's candidates, in a full group, EMB all hits."""
    cost = packaged("h200")
    rows = computed + prod.DLRMV3_CANDIDATES
    alone = cost.service_us(np.array(computed), np.array(history), prod.DLRMV3_CANDIDATES, np.array(0.0), np.array(rows))
    return float(alone) * float(cost.batch_factor(kind, GROUP)) / 1e3


def test_rate_constants_are_the_h200_tables() -> None:
    history = int(prod.DLRMV3_MEAN_HISTORY_LEN)
    assert prod.H200_RETURNING_MS == pytest.approx(grouped_ms("extend", 1, history), rel=0.02)
    assert prod.H200_FULL_PREFILL_MS == pytest.approx(grouped_ms("prefill", history, history), rel=0.02)


def test_production_nodes_run_on_the_measured_costs() -> None:
    cost = SimConfig.production(nodes=1).node.cost
    assert "H200" in cost.source
    assert cost.batch_factor("hit", GROUP) < 1.0  # grouping is measured, not assumed
