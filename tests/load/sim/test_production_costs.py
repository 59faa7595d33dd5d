"""The production workload's per-node rate is derived from the committed H200 cost table, not from guesses."""

from __future__ import annotations

import pytest

from helmrec.allocator.cost_model import packaged
from helmrec.load.sim.config import GROUP_MAX, SimConfig, sized_rate
from helmrec.workload import production as prod
from helmrec.workload.traces import PRODUCTION


def test_rate_constants_are_the_h200_tables() -> None:
    """The constants behind PRODUCTION.arrival_rate are the table's grouped costs at the mean history."""
    rate = sized_rate(packaged("h200"), prod.DLRMV3_MEAN_HISTORY_LEN, prod.DLRMV3_CANDIDATES)
    assert PRODUCTION.arrival_rate == pytest.approx(rate, rel=0.02)


def test_sized_rate_follows_history_and_utilisation() -> None:
    cost = packaged("h200")
    short, long = (sized_rate(cost, h, prod.DLRMV3_CANDIDATES) for h in (1600, 12000))
    assert short > PRODUCTION.arrival_rate > long
    assert sized_rate(cost, 6400, 2048, utilisation=0.35) == pytest.approx(0.5 * sized_rate(cost, 6400, 2048))


def test_production_nodes_run_on_the_measured_costs() -> None:
    cost = SimConfig.production(nodes=1).node.cost
    assert "H200" in cost.source
    assert cost.batch_factor("hit", GROUP_MAX) < 1.0  # grouping is measured, not assumed
