"""Open-loop load on `hstu_ensemble` with MLPerf LoadGen's Server scenario.

    helmrec bench-loadgen --device cuda --preset large --history 14000 --candidates 2048 \
        --latency-ms 80 --qps 200 400 800 --mix grow --json out/loadgen.json

LoadGen (`mlcommons-loadgen`, the load generator of MLPerf Inference) issues queries
with Poisson arrivals at `server_target_qps` and judges the run against a P99
latency bound (`--latency-ms`; MLPerf DLRMv3's Server target is 80 ms). The SUT
sends each query to `hstu_ensemble` through stock `tritonclient.grpc` asynchronously
and completes it in the callback. A query is one user's request: `hit` repeats a
warmed user's history, `grow` adds one event to it (a returning user). The report
keeps, per target QPS, LoadGen's own verdict (VALID / INVALID), its achieved QPS
and P99, and the largest VALID target; LoadGen's summary files are kept under
`--out`. Runs are `--seconds` long, shorter than MLPerf's 600 s official minimum:
the figures are for comparison within this project, not MLPerf submissions.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from helmrec import schema
from helmrec.load.bench.served import (
    Traffic,
    add_traffic_options,
    check_door_options,
    device_memory_bytes,
    first_contact,
    in_process_ceiling,
    node_users,
    pool_statistics,
    pool_stats_delta,
    served_door,
    traffic_for,
    user_arrays,
)

SUMMARY = "mlperf_log_summary.txt"
# Distinct error messages a run keeps (with their counts): enough to say what failed, bounded
# however many queries fail.
ERROR_KINDS = 8


class TritonSUT:
    """LoadGen's system under test: every query becomes one async gRPC infer of a user's request."""

    def __init__(self, url: str, traffic: Traffic, mix: str, lengths: dict[int, int]) -> None:
        """`lengths` holds each user's history length (its keys are the users) and outlives this
        SUT: the next run must go on from where the servers' KV caches are, or its first request per
        user would send a history shorter than the cached one, a KV miss (a whole prefill) for
        every user at once."""
        import tritonclient.grpc as grpcclient  # noqa: PLC0415

        from helmrec.load.client import infer_inputs  # noqa: PLC0415

        self._grpc = grpcclient
        self._inputs = infer_inputs
        self._client = grpcclient.InferenceServerClient(url)
        self._traffic, self._mix, self._users = traffic, mix, len(lengths)
        self._lengths = lengths
        self._next_user = 0
        self._lock = threading.Lock()
        self.errors = 0
        self.error_kinds: Counter[str] = Counter()

    def _failed(self, error: Exception) -> None:
        """Count a failed query and keep its message (the first `ERROR_KINDS` distinct ones)."""
        message = str(error)[:300]
        with self._lock:
            self.errors += 1
            if message in self.error_kinds or len(self.error_kinds) < ERROR_KINDS:
                self.error_kinds[message] += 1

    def _request(self) -> list:
        with self._lock:  # users in turn; a user's requests leave in order, each one event longer (grow)
            user = self._next_user
            self._next_user = (user + 1) % self._users
            if self._mix == "grow" and self._lengths[user] < self._traffic.history + self._traffic.grow_room:
                self._lengths[user] += 1
            length = self._lengths[user]
        return self._inputs(self._grpc, user_arrays(self._traffic, user, length))

    def issue_queries(self, samples: Sequence) -> None:
        import mlperf_loadgen as lg  # noqa: PLC0415

        for sample in samples:

            def done(result, error, sample_id=sample.id) -> None:  # noqa: ANN001 - tritonclient's callback
                if error is not None:
                    self._failed(error)
                lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

            self._client.async_infer(schema.ENSEMBLE_MODEL, self._request(), done)

    def flush_queries(self) -> None:
        """Nothing is held back: every query was sent when it was issued."""


def run_target(
    url: str, traffic: Traffic, mix: str, lengths: dict[int, int], qps: float, latency_ms: float, seconds: float,
    out: Path, nodes: Sequence[str] = (),
) -> dict:  # fmt: skip
    """One LoadGen Server run at `qps`; LoadGen's verdict and figures from its summary, the
    failed queries' messages, and what hstu_pool did on `nodes` meanwhile (groups, execute and
    queue times, each node's share of the requests: where a tail comes from)."""
    import mlperf_loadgen as lg  # noqa: PLC0415

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = qps
    settings.server_target_latency_ns = int(latency_ms * 1e6)
    settings.server_target_latency_percentile = 0.99
    settings.min_duration_ms = int(seconds * 1e3)
    settings.min_query_count = int(qps * seconds)
    out.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    sut_impl = TritonSUT(url, traffic, mix, lengths)
    sut = lg.ConstructSUT(sut_impl.issue_queries, sut_impl.flush_queries)
    qsl = lg.ConstructQSL(len(lengths), len(lengths), lambda _: None, lambda _: None)
    before = [pool_statistics(node) for node in nodes]
    t0 = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    wall_s = time.perf_counter() - t0
    summary = parse_summary((out / SUMMARY).read_text())
    row = {"target_qps": qps, "errors": sut_impl.errors, "error_kinds": dict(sut_impl.error_kinds), **summary}
    if nodes:
        row.update(pool_stats_delta(before, [pool_statistics(node) for node in nodes], wall_s))
    row["wall_s"] = wall_s
    return row


def parse_summary(text: str) -> dict:
    """LoadGen's verdict, achieved QPS and latency percentiles (ms) from mlperf_log_summary.txt."""

    def number(label: str) -> float | None:
        match = re.search(rf"^{re.escape(label)}\s*:\s*([0-9.eE+-]+)", text, re.M)
        return float(match.group(1)) if match else None

    verdict = re.search(r"^Result is\s*:\s*(\w+)", text, re.M)
    # Which of LoadGen's criteria failed (e.g. early stopping needs enough queries to bound the P99).
    unmet = [m.group(1).strip() for m in re.finditer(r"^\s*(.+?) satisfied\s*:\s*NO", text, re.M)]
    ns = {
        key: number(label)
        for key, label in (("p50_ms", "50.00 percentile latency (ns)"), ("p99_ms", "99.00 percentile latency (ns)"))
    }
    return {
        "result": verdict.group(1) if verdict else "UNKNOWN",
        "unmet": unmet,
        "achieved_qps": number("Completed samples per second") or number("Scheduled samples per second"),
        **{key: (v / 1e6 if v is not None else None) for key, v in ns.items()},
    }


def run(args: argparse.Namespace) -> dict:
    try:
        import mlperf_loadgen  # noqa: F401, PLC0415 - checked before a server starts
    except ImportError:
        raise SystemExit("bench-loadgen needs MLPerf LoadGen: pip install 'helmrec[loadgen]' (mlcommons-loadgen)") from None
    from helmrec.serving.network import read_limits  # noqa: PLC0415

    report: dict = {"device": args.device, "preset": args.preset, "history": args.history, "candidates": args.candidates,
                    "mix": args.mix, "latency_bound_ms": args.latency_ms, "seconds": args.seconds, "servers": args.servers,
                    "device_memory_bytes": device_memory_bytes(args),
                    "runs": []}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with served_door(args, Path(tmp)) as door:
            traffic = traffic_for(args, read_limits(door.repo / "hstu" / "1" / "weights.pt"))
            first_contact(door.url, traffic, args.users)
            lengths = dict.fromkeys(range(args.users), traffic.history)  # what the servers have cached, across runs
            for k, qps in enumerate(args.qps):
                out = args.out / f"{k:02d}_qps_{qps:g}"  # a target may repeat (e.g. first minute vs later)
                row = run_target(door.url, traffic, args.mix, lengths, qps, args.latency_ms, args.seconds, out, door.nodes)
                report["runs"].append(row)
                print(json.dumps(row), flush=True)
        if args.ceiling_seconds > 0:  # once the servers have given the device back; the repository stays until then
            report["ceiling"] = in_process_ceiling(
                door.repo, args.device, traffic, args.mix, args.group, node_users(args), args.ceiling_seconds
            )
            print(json.dumps(report["ceiling"]), flush=True)
    valid = [r["target_qps"] for r in report["runs"] if r["result"] == "VALID"]
    report["max_valid_qps"] = max(valid) if valid else None
    if valid and "ceiling" in report:
        report["max_valid_share_of_ceiling"] = report["max_valid_qps"] / report["ceiling"]["rps"]
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_traffic_options(parser)
    parser.add_argument("--mix", choices=("hit", "grow"), default="grow")
    parser.add_argument("--qps", type=float, nargs="+", default=[20.0, 40.0])
    parser.add_argument("--latency-ms", type=float, default=80.0, help="the P99 bound LoadGen judges (MLPerf DLRMv3 Server: 80)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--group", type=int, default=32, help="requests per rank_many group of the in-process ceiling")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0,
                        help="timed loop of the in-process ceiling after the servers stop; 0 skips it")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("out/loadgen"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    check_door_options(parser, args)
    report = run(args)
    for r in report["runs"]:
        print(f"target {r['target_qps']:>8.0f} QPS: {r['result']:<8} achieved {r['achieved_qps'] or 0:>8.1f}  "
              f"P50 {r['p50_ms'] or 0:>7.2f} ms  P99 {r['p99_ms'] or 0:>7.2f} ms  errors {r['errors']}  "
              f"unmet: {', '.join(r['unmet']) or '-'}")  # fmt: skip
        for message, count in r["error_kinds"].items():
            print(f"    {count} x {message}")
    print(f"largest VALID Server QPS at P99 <= {args.latency_ms:g} ms: {report['max_valid_qps']}")
    if "ceiling" in report:
        share = report.get("max_valid_share_of_ceiling")
        print(f"in-process ceiling ({args.mix}, groups of {args.group}): {report['ceiling']['rps']:.0f} req/s"
              + (f"; largest VALID / ceiling: {share:.2f}" if share is not None else ""))  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
