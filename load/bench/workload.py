"""What a load test sends: a seeded trace sized for the served model, replayed in time order.

The Locust users and the benchmark draw every request from one `helmrec.workload.traces`
trace, so a returning user's history is a longer prefix of the same item
stream (the KV cache can reuse and extend it) and two runs on the same seed
send the same requests. The trace is generated for the served network's
limits (catalogue size, longest history, most candidates), so every request
is valid, and with the run's duration so Burst's bursts and Trend's drift
happen inside the run rather than minutes after it ends.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import numpy as np

from helmrec import schema
from helmrec.workload.traces import REGIMES, WORKLOADS, Trace, TraceConfig, generate, regime_config

# Requests older than this (trace time behind the run's clock) are skipped: when the servers
# fall behind, the replay stays on the trace's schedule (bursts stay where they belong) instead
# of sending a backlog late. Skipping is safe: a user's later rows only extend earlier histories.
MAX_LAG_S = 0.5


@dataclass(frozen=True)
class WorkloadConfig:
    """A regime's trace, scaled to one small cluster and one run.

    Defaults suit the `tiny` network on a 2-core CPU; `base_rate` is what the
    cluster must sustain outside bursts (bursts multiply it by `burst_rate_mult`).
    """

    regime: str = "steady"
    seed: int = 0
    duration_s: float = 30.0
    base_rate: float = 40.0  # requests per second outside bursts
    num_users: int = 3000
    hot_users: int = 60
    mean_history_len: float = 24.0
    candidates: int = 32
    burst_rate_mult: float = 2.0
    # The named trace workload the regime starts from (`helmrec.workload.traces.WORKLOADS`): "paper",
    # or "production", the grounded one (MovieLens-fitted user activity, sessions and history spread).
    # The sizes above and the run's timing replace the workload's own.
    workload: str = "paper"
    # Added to every USER_ID sent: runs that share servers (`helmrec bench --keep-servers`) use
    # disjoint users, so no run finds another's KV prefixes.
    user_offset: int = 0

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"WorkloadConfig.workload must be one of {tuple(WORKLOADS)}, got {self.workload!r}")
        if self.user_offset < 0:
            raise ValueError(f"WorkloadConfig.user_offset must be >= 0, got {self.user_offset}")
        if self.regime not in REGIMES:
            raise ValueError(f"WorkloadConfig.regime must be one of {REGIMES}, got {self.regime!r}")
        for name in ("duration_s", "base_rate", "mean_history_len", "burst_rate_mult"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WorkloadConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("num_users", "hot_users", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorkloadConfig.{name} must be >= 1, got {getattr(self, name)}")

    def trace_config(self, num_items: int, max_history_len: int, max_candidates: int) -> TraceConfig:
        """The trace config for a network with these limits.

        Bursts: two per run, the first a quarter of the way in, each a sixth of
        the run long, so a short run still sees the rise and the recovery twice;
        Trend drifts over the whole run, however short.
        """
        if self.candidates > max_candidates:
            raise ValueError(
                f"WorkloadConfig.candidates ({self.candidates}) exceeds the served model's "
                f"max_candidates ({max_candidates})"
            )
        return regime_config(
            self.regime,
            self.seed,
            workload=self.workload,
            num_users=self.num_users,
            hot_users=min(self.hot_users, self.num_users),
            num_items=num_items,
            mean_history_len=min(self.mean_history_len, float(max_history_len)),
            max_history_len=max_history_len,
            candidates=self.candidates,
            **self._timing(),
        )

    def rate_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """Arrival rate (req/s) of the trace at run times `t_s` (the same schedule the rows follow)."""
        config = regime_config(self.regime, self.seed, workload=self.workload, **self._timing())
        return config.rate_at(np.asarray(t_s, dtype=np.float64))

    def _timing(self) -> dict[str, float | None]:
        return {
            "burst_start_s": None,  # half of burst_every_s (the production workload's own is 60 s in)
            "arrival_rate": self.base_rate,
            "duration_s": self.duration_s,
            "burst_every_s": self.duration_s / 2,
            "burst_len_s": self.duration_s / 6,
            "burst_rate_mult": self.burst_rate_mult,
            "trend_period_s": self.duration_s,
        }

    def with_regime(self, regime: str) -> WorkloadConfig:
        return dataclasses.replace(self, regime=regime)


def request_arrays(trace: Trace, row: int, user_offset: int = 0) -> dict[str, np.ndarray]:
    """The `hstu_ensemble` inputs of trace row `row` (HISTORY_ACTIONS left out: the trace has none)."""
    return schema.ensemble_request(
        user_offset + int(trace.user_id[row]), trace.history_ids(row), trace.history_timestamps(row), trace.candidate_ids(row)
    )


@dataclass(frozen=True)
class Partition:
    """Share `index` of `count` of a trace: the users whose id is `index` modulo `count`.

    Several load-generator processes (Locust `--processes`) replay one trace this way:
    together they send every row once, each user's rows stay in one process and in
    order (a returning user's history only ever grows, as the KV cache expects), and
    each process keeps the trace's timing for its share.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"Partition: index must be in [0, count) and count >= 1, got {self.index} of {self.count}")

    def rows(self, trace: Trace) -> np.ndarray:
        """The trace's rows of this share, in time order."""
        return np.flatnonzero(trace.user_id % self.count == self.index)


class TraceFeed:
    """Hands out trace rows in time order to many concurrent senders.

    `take(elapsed_s)` returns the next row and how long to wait before sending
    it (its arrival time may still be ahead of the run's clock). Rows more than
    `max_lag_s` behind the clock are skipped. Not locked: Locust's users are
    greenlets on one thread, and `take` never yields. With a `partition` only
    that share of the rows is handed out.
    """

    def __init__(self, trace: Trace, max_lag_s: float = MAX_LAG_S, partition: Partition = Partition()) -> None:
        if max_lag_s < 0:
            raise ValueError(f"TraceFeed.max_lag_s must be >= 0, got {max_lag_s}")
        self.trace = trace
        self.max_lag_s = max_lag_s
        self._rows = partition.rows(trace)
        self._t_s = trace.t_s[self._rows]
        self._cursor = 0
        self.skipped = 0

    def take(self, elapsed_s: float) -> tuple[int, float] | None:
        """(row, wait_s) of the next request, or None once the trace is used up."""
        first_fresh = int(np.searchsorted(self._t_s, elapsed_s - self.max_lag_s, side="left"))
        if first_fresh > self._cursor:
            self.skipped += first_fresh - self._cursor
            self._cursor = first_fresh
        if self._cursor >= len(self._rows):
            return None
        at = self._cursor
        self._cursor += 1
        return int(self._rows[at]), max(0.0, float(self._t_s[at]) - elapsed_s)


def make_feed(
    workload: WorkloadConfig, num_items: int, max_history_len: int, max_candidates: int, partition: Partition = Partition()
) -> TraceFeed:
    """The feed of a workload for a network with these limits (its `partition` share of the rows)."""
    return TraceFeed(generate(workload.trace_config(num_items, max_history_len, max_candidates)), partition=partition)


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    """The workload's flags, on Locust's parser (an argparse subclass) or the bench's."""
    d = WorkloadConfig()
    add = parser.add_argument
    add("--shape", choices=REGIMES, default="steady", help="workload regime: steady, trend or burst")
    add("--trace-seed", type=int, default=d.seed, help="seed of the trace (same seed, same requests)")
    add("--shape-duration", type=float, default=d.duration_s, help="seconds; the shape stops the run after it")
    add("--base-rate", type=float, default=d.base_rate, help="requests/s outside bursts")
    add("--user-offset", type=int, default=d.user_offset, help="added to every USER_ID sent")
    add_trace_shape_options(parser)


def add_trace_shape_options(parser: argparse.ArgumentParser) -> None:
    """The trace's shape flags, shared by Locust's parser and `helmrec bench`."""
    d = WorkloadConfig()
    add = parser.add_argument
    add("--workload", choices=tuple(WORKLOADS), default=d.workload, help="trace workload the shape starts from "
        "(production: the grounded one, docs/workload.md)")  # fmt: skip
    add("--burst-rate-mult", type=float, default=d.burst_rate_mult, help="rate multiplier inside a burst")
    add("--trace-users", type=int, default=d.num_users, help="distinct users in the trace")
    add("--hot-users", type=int, default=d.hot_users, help="size of the hot user set")
    add("--mean-history", type=float, default=d.mean_history_len, help="mean first-visit history length")
    add("--candidates", type=int, default=d.candidates, help="candidate items per request")


def workload_from_options(options: argparse.Namespace) -> WorkloadConfig:
    """The WorkloadConfig the flags of `add_workload_options` describe."""
    return WorkloadConfig(
        regime=options.shape,
        seed=options.trace_seed,
        duration_s=options.shape_duration,
        base_rate=options.base_rate,
        num_users=options.trace_users,
        hot_users=options.hot_users,
        mean_history_len=options.mean_history,
        candidates=options.candidates,
        burst_rate_mult=options.burst_rate_mult,
        workload=options.workload,
        user_offset=options.user_offset,
    )


def workload_flags(workload: WorkloadConfig) -> list[str]:
    """The command-line flags that rebuild `workload` in a Locust process (inverse of the above)."""
    return [
        f"--shape={workload.regime}",
        f"--trace-seed={workload.seed}",
        f"--shape-duration={workload.duration_s}",
        f"--base-rate={workload.base_rate}",
        f"--burst-rate-mult={workload.burst_rate_mult}",
        f"--trace-users={workload.num_users}",
        f"--hot-users={workload.hot_users}",
        f"--mean-history={workload.mean_history_len}",
        f"--candidates={workload.candidates}",
        f"--workload={workload.workload}",
        f"--user-offset={workload.user_offset}",
    ]
