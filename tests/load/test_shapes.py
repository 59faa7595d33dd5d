"""Load shapes: each regime's user count follows its trace's arrival-rate schedule.

Pure unit tests (no Locust runner, no server): the schedule is a function of
the workload and the per-user rate, so the expected counts are computed from
the definitions, not copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from helmrec.load.bench.workload import WorkloadConfig
from helmrec.load.shapes import ShapeSchedule


def schedule(regime: str, **kw: float) -> ShapeSchedule:
    workload = WorkloadConfig(regime=regime, duration_s=60.0, base_rate=40.0, burst_rate_mult=2.0)
    return ShapeSchedule(workload, per_user_rps=kw.get("per_user_rps", 2.0))


@pytest.mark.parametrize("regime", ["steady", "trend"])
def test_steady_and_trend_hold_the_base_rate_for_the_whole_run(regime: str) -> None:
    s = schedule(regime)
    for t in np.linspace(0.0, 59.9, 50):
        assert s.tick(float(t)) == (20, 20.0)  # 40 req/s / 2 req/s per user
    assert s.tick(60.0) is None  # the shape ends the run


def test_burst_doubles_users_inside_its_two_bursts_only() -> None:
    s = schedule("burst")
    # duration 60 s: bursts every 30 s (first at 15 s), each 10 s long.
    inside = [15.0, 20.0, 24.9, 45.0, 54.9]
    outside = [0.0, 14.9, 25.0, 30.0, 44.9, 55.0, 59.9]
    for t in inside:
        assert s.users_at(t) == 40, t
    for t in outside:
        assert s.users_at(t) == 20, t
    # The step completes within a second: spawn rate = the peak user count.
    assert s.peak_users == 40 and s.tick(20.0) == (40, 40.0)


def test_offered_rate_is_users_times_per_user_rate_rounded_up() -> None:
    s = schedule("steady", per_user_rps=3.0)  # 40 / 3 = 13.3 -> 14 users, never under-offered
    assert s.users_at(1.0) == math.ceil(40 / 3)
    assert s.users_at(1.0) * 3.0 >= 40.0
    tiny = ShapeSchedule(WorkloadConfig(base_rate=0.5), per_user_rps=2.0)
    assert tiny.users_at(0.0) == 1  # at least one user


def test_burst_schedule_matches_the_trace_rows_arrival_rate() -> None:
    """The users follow the same schedule the replayed rows were drawn from."""
    from helmrec.workload.traces import generate

    workload = WorkloadConfig(regime="burst", duration_s=60.0, base_rate=40.0, burst_rate_mult=2.0)
    trace = generate(workload.trace_config(num_items=300, max_history_len=64, max_candidates=64))
    s = ShapeSchedule(workload, per_user_rps=2.0)
    burst_rows = np.count_nonzero((trace.t_s >= 15.0) & (trace.t_s < 25.0)) / 10.0
    calm_rows = np.count_nonzero((trace.t_s >= 0.0) & (trace.t_s < 15.0)) / 15.0
    assert burst_rows == pytest.approx(s.users_at(20.0) * 2.0, rel=0.15)
    assert calm_rows == pytest.approx(s.users_at(5.0) * 2.0, rel=0.15)


def test_trend_keeps_the_rate_while_the_trace_drifts() -> None:
    """Trend's users stay put; its drift is in the rows: more hot-user requests and longer histories late."""
    from helmrec.workload.traces import generate

    workload = WorkloadConfig(regime="trend", duration_s=60.0, base_rate=40.0, num_users=3000, hot_users=60)
    trace = generate(workload.trace_config(num_items=300, max_history_len=64, max_candidates=64))
    early, late = trace.window(0.0, 15.0), trace.window(45.0, 60.0)
    assert ShapeSchedule(workload).users_at(5.0) == ShapeSchedule(workload).users_at(55.0)
    assert trace.history_len[late].mean() > trace.history_len[early].mean() * 1.3
    # hot_user_share as the controller defines it: requests whose user already came in the same window.
    def repeat_share(rows: slice) -> float:
        users = trace.user_id[rows]
        return 1.0 - np.unique(users).size / users.size

    assert repeat_share(late) > repeat_share(early) + 0.1


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="per_user_rps must be > 0"):
        ShapeSchedule(WorkloadConfig(), per_user_rps=0.0)
    with pytest.raises(ValueError, match="WorkloadConfig.regime must be one of"):
        WorkloadConfig(regime="spiky")
    with pytest.raises(ValueError, match="WorkloadConfig.base_rate must be > 0"):
        WorkloadConfig(base_rate=0.0)
