"""The Steady, Trend and Burst load shapes: how many Locust users run at each second.

A shape decides how many Locust users run at each second. Every user sends at
most `per_user_rps` requests per second (`constant_throughput`), so the user
count is what turns the trace's arrival-rate schedule into offered load: the
count follows `WorkloadConfig.rate_at`, the same schedule the trace's rows
follow, and the rows themselves carry the regime's drift in hot users and
history length.

This module never imports Locust: importing Locust monkey-patches the whole
process for gevent, which the test suite and the benchmark must not suffer.
The locustfile's one `LoadTestShape` reads the schedule `--shape` picks on
Locust's clock.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from helmrec.load.bench.workload import WorkloadConfig, workload_from_options

DEFAULT_PER_USER_RPS = 2.0


@dataclass(frozen=True)
class ShapeSchedule:
    """Users over time for one workload.

    `spawn_rate` is the peak user count per second, so the step into (and out
    of) a burst completes within one second instead of ramping through it.
    """

    workload: WorkloadConfig
    per_user_rps: float = DEFAULT_PER_USER_RPS

    def __post_init__(self) -> None:
        if self.per_user_rps <= 0:
            raise ValueError(f"ShapeSchedule.per_user_rps must be > 0, got {self.per_user_rps}")

    def users_at(self, t_s: float) -> int:
        """Users needed at run time `t_s` to offer the trace's rate (at least one)."""
        rate = float(self.workload.rate_at(t_s))
        return max(1, math.ceil(rate / self.per_user_rps - 1e-9))

    @property
    def peak_users(self) -> int:
        return max(1, math.ceil(self.workload.base_rate * self._peak_mult() / self.per_user_rps - 1e-9))

    def tick(self, t_s: float) -> tuple[int, float] | None:
        """Locust's (user_count, spawn_rate) at run time `t_s`; None ends the run."""
        if t_s >= self.workload.duration_s:
            return None
        return self.users_at(t_s), float(self.peak_users)

    def _peak_mult(self) -> float:
        return max(1.0, self.workload.burst_rate_mult) if self.workload.regime == "burst" else 1.0


def add_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--per-user-rps",
        type=float,
        default=DEFAULT_PER_USER_RPS,
        help="requests/s each Locust user sends at most; users = rate / this",
    )


def schedule_from_options(options: argparse.Namespace) -> ShapeSchedule:
    return ShapeSchedule(workload_from_options(options), options.per_user_rps)
