"""Locust workload for `hstu_ensemble`: seeded Steady/Trend/Burst traces over stock tritonclient gRPC.

    locust -f load/locustfile.py --headless --host 127.0.0.1:8001 --shape burst \
        --shape-duration 60 --base-rate 40 --csv out/locust --latency-csv out/latency.csv

`--host` is the gRPC address of one tritonserver or of `helmrec route`
("grpc://" is optional). Every request is a row of one seeded trace
(`helmrec.load.bench.workload`): returning users send longer prefixes of the same
history, so KV prefixes are reused and extended. The run's length and user
count come from the shape `--shape` picks (`helmrec.load.shapes`), not from -u/-t.

gevent: tritonclient's gRPC client is grpcio, whose blocking calls would
stall every greenlet; `init_gevent()` makes grpcio cooperate with gevent's
hub, and must run before any channel exists, i.e. at import of this file.

Several processes (`--processes N`): Locust's master only schedules users; each
worker replays its share of the trace (the users whose id is its worker index
modulo N, so a user's rows stay in order in one process) and writes its own exact
log next to `--latency-csv` (`latency.part0.csv`, ...), read back together by
`helmrec.load.bench.latency`. Workers started on their own (`--worker`) need
`--trace-partitions N`, the number of workers.

Precision: Locust rounds response times to whole milliseconds below 100 ms in
its statistics, which erases a P99 on a fast model; every request's exact
start and latency (perf_counter) is logged from the same request event hook
and written to `--latency-csv`.
"""

from __future__ import annotations

import argparse
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import gevent  # noqa: E402 - after init_gevent, by design
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import LoadTestShape, User, constant_throughput, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from helmrec import schema  # noqa: E402
from helmrec.load.bench.latency import LatencyLog, part_path  # noqa: E402
from helmrec.load.bench.workload import (  # noqa: E402
    Partition,
    TraceFeed,
    add_workload_options,
    make_feed,
    request_arrays,
    workload_from_options,
)
from helmrec.load.client import infer_inputs  # noqa: E402
from helmrec.load.shapes import ShapeSchedule, add_shape_options, schedule_from_options  # noqa: E402

MODEL = schema.ENSEMBLE_MODEL
STOP_TIMEOUT_S = "30"  # Locust's --stop-timeout default here (a timespan string, like the flag)
# The `tiny` preset's limits: the defaults fit the network tests and `helmrec bench` serve.
TINY_LIMITS = {"num_items": 300, "max_history": 64, "max_candidates": 64}


class ScoreShapeError(Exception):
    """The server answered, but not with one row of scores per candidate."""


@events.init_command_line_parser.add_listener
def _add_options(parser: argparse.ArgumentParser) -> None:
    add_workload_options(parser)
    add_shape_options(parser)
    parser.add_argument("--num-items", type=int, default=TINY_LIMITS["num_items"], help="served catalogue size")
    parser.add_argument("--max-history", type=int, default=TINY_LIMITS["max_history"], help="served max history")
    parser.add_argument(
        "--max-candidates", type=int, default=TINY_LIMITS["max_candidates"], help="served max candidates"
    )
    parser.add_argument("--latency-csv", default="", help="write every request's exact timing to this CSV")
    parser.add_argument(
        "--trace-partitions", type=int, default=0, help="workers sharing the trace (default: --processes)"
    )
    # Users stopped by the shape (a burst ending, the run ending) finish the request they are in,
    # so no request is cut off half-way and counted by one log but not the other.
    parser.set_defaults(stop_timeout=STOP_TIMEOUT_S)


def grpc_target(host: str) -> str:
    """`host:port` for tritonclient from Locust's --host (which may carry a grpc:// scheme)."""
    target = host.split("://", 1)[1] if "://" in host else host
    if ":" not in target:
        raise ValueError(f"--host {host!r}: expected the gRPC address HOST:PORT of a tritonserver or the router")
    return target.rstrip("/")


def partition(environment: Environment) -> Partition:
    """This process's share of the trace: all of it, or a worker's when several send."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return Partition()
    options = environment.parsed_options
    count = options.trace_partitions or options.processes
    if not count:
        raise ValueError("a Locust worker started on its own needs --trace-partitions N (the number of workers)")
    return Partition(runner.worker_index, count)


class LoadRun:
    """What every user of one Locust process shares: the trace feed, the client, the clock, the log."""

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        share = partition(environment)
        self.feed: TraceFeed = make_feed(
            workload_from_options(options), options.num_items, options.max_history, options.max_candidates, share
        )
        self.client = grpcclient.InferenceServerClient(grpc_target(environment.host or ""))
        self.log = LatencyLog()
        self.user_offset: int = options.user_offset
        self.latency_csv: str = options.latency_csv
        if self.latency_csv and share.count > 1:
            self.latency_csv = str(part_path(self.latency_csv, share.index))
        self.started = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started


RUN: LoadRun | None = None


@events.test_start.add_listener
def _start(environment: Environment, **_: object) -> None:
    global RUN
    if environment.host is None:
        raise ValueError("--host is required: the gRPC address of a tritonserver or of the router")
    if not isinstance(environment.runner, MasterRunner):  # a master schedules users and sends nothing
        RUN = LoadRun(environment)


@events.request.add_listener
def _log_request(
    response_time: float, exception: Exception | None = None, context: dict | None = None, **_: object
) -> None:
    """Log from Locust's own hook, so the exact log and Locust's statistics count the same requests."""
    if RUN is not None and context and "start_unix_s" in context:
        RUN.log.record(context["start_unix_s"], response_time, context["user_id"], context["history_len"], exception is None)


@events.test_stop.add_listener
def _stop(environment: Environment, **_: object) -> None:
    if RUN is None:
        return
    if RUN.latency_csv:
        RUN.log.write_csv(RUN.latency_csv)
    print(
        f"helmrec load: {len(RUN.log)} requests timed, {RUN.feed.skipped} trace rows skipped "
        f"(more than the replay lag behind the clock)",
        flush=True,
    )


class HstuUser(User):
    """One client of the recommender; sends the trace's next request, at most `--per-user-rps` a second."""

    def on_start(self) -> None:
        self._pacer = constant_throughput(self.environment.parsed_options.per_user_rps)

    def wait_time(self) -> float:
        return self._pacer(self)

    @task
    def rank(self) -> None:
        assert RUN is not None, "test_start creates the run before users spawn"
        taken = RUN.feed.take(RUN.elapsed_s())
        if taken is None:  # the trace is used up; the shape ends the run at the same time
            gevent.sleep(0.05)
            return
        row, wait_s = taken
        if wait_s > 0:
            gevent.sleep(wait_s)
        arrays = request_arrays(RUN.feed.trace, row, RUN.user_offset)
        inputs = infer_inputs(grpcclient, arrays)
        error: Exception | None = None
        length = 0
        start_unix = time.time()
        t0 = time.perf_counter()
        try:
            result = RUN.client.infer(MODEL, inputs)
            latency_ms = (time.perf_counter() - t0) * 1e3
            scores = result.as_numpy(schema.SCORES)
            n_cand = arrays[schema.CANDIDATE_ITEM_IDS].shape[0]
            if scores is None or scores.ndim != 2 or scores.shape[0] != n_cand:
                got = None if scores is None else list(scores.shape)
                raise ScoreShapeError(f"{schema.SCORES}: expected [{n_cand}, T], got {got}")
            length = scores.nbytes
        except (InferenceServerException, ScoreShapeError) as exc:
            latency_ms = (time.perf_counter() - t0) * 1e3
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=MODEL,
            response_time=latency_ms,
            response_length=length,
            exception=error,
            context={
                "start_unix_s": start_unix,
                "user_id": int(arrays[schema.USER_ID][0]),
                "history_len": int(arrays[schema.HISTORY_ITEM_IDS].shape[0]),
            },
        )


class WorkloadShape(LoadTestShape):
    """The Steady, Trend or Burst shape `--shape` picks: users over time from `helmrec.load.shapes.ShapeSchedule`.

    One class, not three: Locust runs the first shape class a locustfile defines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.schedule: ShapeSchedule | None = None

    def tick(self) -> tuple[int, float] | None:
        if self.schedule is None:
            assert self.runner is not None, "Locust sets runner before the first tick"
            self.schedule = schedule_from_options(self.runner.environment.parsed_options)
        return self.schedule.tick(self.get_run_time())
