"""The production workload's MovieLens constants are what the fit gives, and the fit is reproducible."""

from __future__ import annotations

import importlib.util

import pytest

from helmrec.workload import production as prod

pytestmark = pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel")


def test_fit_reproduces_the_constants_of_the_production_workload() -> None:
    from helmrec.hstu.data import load_ml100k
    from helmrec.load.workload_fit import fit

    data = load_ml100k()
    first, second = fit(data), fit(data)
    assert first == second
    assert first.users == 943 and first.ratings == 100_000
    assert first.session_return_share == prod.ML_SESSION_RETURN_SHARE
    assert first.intra_session_gap_quantiles_s == prod.ML_INTRA_SESSION_GAP_QUANTILES_S
    assert first.intra_session_gap_median_s == prod.ML_INTRA_SESSION_GAP_MEDIAN_S
    assert first.user_activity_zipf == prod.ML_USER_ACTIVITY_ZIPF
    assert first.history_log_sigma == prod.ML_HISTORY_LOG_SIGMA
    # Sessions come back within minutes; sessions themselves days apart, far burstier than Poisson.
    assert first.inter_session_gap_median_h > 24 and first.inter_session_gap_cv > 1
