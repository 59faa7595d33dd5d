"""One benchmark run: a cluster up, a headless Locust run through its router, the figures out.

The run's latency figures come from the locustfile's exact per-request log,
its cache figures from the nodes' own metrics (scraped while Locust runs),
so nothing in the result is estimated by the benchmark itself.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helmrec.load.bench.cluster import Cluster, ClusterConfig
from helmrec.load.bench.latency import Latencies, LatencySummary, log_files, read_latencies, summarize
from helmrec.load.bench.metrics import CacheTotals, MetricsPoller, MetricsSample, cache_totals
from helmrec.load.bench.workload import WorkloadConfig, workload_flags
from helmrec.resources import locustfile
from helmrec.router.backend_metrics import BackendReport

LOCUSTFILE = locustfile()
# Locust's final statistics (`--json-file` adds .json): written at shutdown, unlike its CSVs,
# which are rewritten once a second and can miss the run's last second.
LOCUST_FINAL = "locust_final"
# Locust's own start-up and shutdown around the shape's duration.
LOCUST_GRACE_S = 120.0
# The exact per-request log; with several Locust processes, one part per process beside it.
LATENCY_LOG = "latency.csv"


@dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on; two runs with equal specs send the same requests."""

    cluster: ClusterConfig
    workload: WorkloadConfig
    per_user_rps: float = 2.0
    slo_ms: float = 25.0
    metrics_interval_s: float = 0.5
    processes: int = 1  # Locust processes sending (more than 1: a master and this many workers)
    # Seconds from the first request that are sent but not measured (caches fill, controllers learn):
    # the summary and the hit rates start after them; the plots show the whole run.
    warmup_s: float = 0.0

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"RunSpec.processes must be >= 1, got {self.processes}")
        if not 0.0 <= self.warmup_s < self.workload.duration_s:
            raise ValueError(f"RunSpec.warmup_s must be in [0, duration {self.workload.duration_s:g}), got {self.warmup_s}")


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    out_dir: Path
    summary: LatencySummary
    caches: CacheTotals
    latencies: Latencies
    samples: tuple[MetricsSample, ...]
    failed_scrapes: int
    locust_exit_code: int
    probe_ms: tuple[float, ...] = ()  # `Cluster.probe` just before the run: the served path unloaded


class BenchError(RuntimeError):
    """A run that could not produce figures (a process failed); the message says which and why."""


def locust_command(spec: RunSpec, host: str, out_dir: Path, limits: tuple[int, int, int]) -> list[str]:
    num_items, max_history, max_candidates = limits
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", host, "--csv", str(out_dir / "locust"), "--json-file", str(out_dir / LOCUST_FINAL),
        "--latency-csv", str(out_dir / LATENCY_LOG),
        f"--per-user-rps={spec.per_user_rps}", f"--num-items={num_items}",
        f"--max-history={max_history}", f"--max-candidates={max_candidates}",
        *workload_flags(spec.workload), *(["--processes", str(spec.processes)] if spec.processes > 1 else []),
    ]  # fmt: skip


def run_once(spec: RunSpec, out_dir: Path) -> RunResult:
    """Start the cluster, replay the workload through the router, stop everything, read the figures."""
    with tempfile.TemporaryDirectory(prefix="helmrec-bench-") as tmp, Cluster(spec.cluster, Path(tmp)) as cluster:
        return run_on(cluster, spec, out_dir)


def run_on(cluster: Cluster, spec: RunSpec, out_dir: Path) -> RunResult:
    """Replay the workload through a started cluster's router and read the figures; the cluster
    stays up (several runs of one system can share it, see `helmrec bench --keep-servers`)."""
    if cluster.config != spec.cluster or cluster.limits is None:
        raise BenchError(f"run_on: the cluster serves {cluster.config}, the run asks for {spec.cluster}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in log_files(out_dir / LATENCY_LOG):  # an earlier run's logs in this folder
        stale.unlink()
    limits = (cluster.limits.num_items, cluster.limits.max_seq_len, cluster.limits.max_candidates)
    command = locust_command(spec, cluster.router_grpc_url, out_dir, limits)
    probe_ms = cluster.probe()  # before the poller's baseline scrape: its requests are not the run's
    settle_s = 1.5 * cluster.control_interval_s
    poller = MetricsPoller(cluster.metrics_urls, spec.metrics_interval_s, settle_s).start()
    try:
        with (out_dir / "locust.log").open("wb") as log:
            proc = subprocess.run(  # noqa: S603 - our own locustfile
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=spec.workload.duration_s + LOCUST_GRACE_S,
                check=False,
            )
    finally:
        samples = poller.stop()
    (out_dir / "router.log").write_text(cluster.router_log())
    latency_csv = out_dir / LATENCY_LOG
    logs = log_files(latency_csv)
    if len(logs) != spec.processes:
        tail = (out_dir / "locust.log").read_text(errors="replace")[-3000:]
        raise BenchError(
            f"Locust exited with code {proc.returncode} and wrote {len(logs)} of the {spec.processes} "
            f"logs of {latency_csv}:\n{tail}"
        )
    latencies = read_latencies(*logs)
    if len(latencies) == 0:
        raise BenchError(f"{latency_csv}: Locust sent no request; see {out_dir / 'locust.log'}")
    counted = locust_request_count(out_dir / f"{LOCUST_FINAL}.json")
    if counted != len(latencies):
        raise BenchError(f"{latency_csv}: {len(latencies)} requests logged, but Locust counted {counted}")
    write_metrics_csv(samples, out_dir / "metrics.csv")
    return measured(spec, out_dir, latencies, samples, poller.failed_scrapes, proc.returncode, probe_ms)


def measured(
    spec: RunSpec,
    out_dir: Path,
    latencies: Latencies,
    samples: list[MetricsSample],
    failed_scrapes: int,
    locust_exit_code: int,
    probe_ms: list[float] | tuple[float, ...],
) -> RunResult:
    """The run's figures from its logs: after `spec.warmup_s`, latencies and cache counters alike."""
    since_unix_s = float(latencies.start_unix_s[0]) + spec.warmup_s
    return RunResult(
        spec=spec,
        out_dir=out_dir,
        summary=summarize(latencies.since(spec.warmup_s), spec.slo_ms),
        caches=cache_totals(samples, since_unix_s),
        latencies=latencies,
        samples=tuple(samples),
        failed_scrapes=failed_scrapes,
        locust_exit_code=locust_exit_code,
        probe_ms=tuple(probe_ms),
    )


def locust_request_count(path: Path) -> int:
    """Requests (failed ones included) in Locust's final statistics file."""
    return sum(int(entry["num_requests"]) for entry in json.loads(path.read_text()))


METRICS_COLUMNS = (
    "t_unix_s", "node", "alpha", "emb_lookups_total", "emb_hits_total", "kv_requests_total", "kv_hits_total",
    "kv_cached_users", "kv_evictions_total", "emb_evictions_total",
)  # fmt: skip


def write_metrics_csv(samples: list[MetricsSample], path: Path) -> None:
    """Every scrape of every node, one row each (empty cell: the node did not export it)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(METRICS_COLUMNS)
        for s in samples:
            values = [getattr(s.report, name) for name in METRICS_COLUMNS[2:]]
            out.writerow([f"{s.t_unix_s:.3f}", s.node, *("" if v is None else v for v in values)])


def read_metrics_csv(path: Path) -> list[MetricsSample]:
    """The scrapes `write_metrics_csv` wrote, back as samples (an empty cell: not exported)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and tuple(rows[0]) != METRICS_COLUMNS:
        raise ValueError(f"{path}: columns must be {','.join(METRICS_COLUMNS)}, got {','.join(rows[0])}")
    return [
        MetricsSample(
            float(row["t_unix_s"]),
            int(row["node"]),
            BackendReport(**{name: float(row[name]) if row[name] else None for name in METRICS_COLUMNS[2:]}),
        )
        for row in rows
    ]


# -- finished runs, kept across commands (`helmrec bench --resume`) ---------------------------------
RUN_RECORD = "run.json"


# Not part of what a run did, only of how it is read: a resumed comparison may measure from
# another point of the same logs.
ANALYSIS_ONLY = ("warmup_s",)


def spec_record(spec: RunSpec) -> dict[str, object]:
    """The spec as JSON values: what a finished run is matched by when a comparison resumes."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def save_record(result: RunResult) -> None:
    """Mark the run finished, last, and atomically: a folder without the record is re-run."""
    record = {
        "spec": spec_record(result.spec),
        "failed_scrapes": result.failed_scrapes,
        "locust_exit_code": result.locust_exit_code,
        "probe_ms": list(result.probe_ms),
    }
    partial = result.out_dir / f"{RUN_RECORD}.partial"
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, result.out_dir / RUN_RECORD)


def load_record(spec: RunSpec, out_dir: Path) -> RunResult | None:
    """The finished run of `spec` in `out_dir`, read back from its logs (measured from `spec.warmup_s`
    on, whatever the command that ran it said); None if it never finished.

    A finished run of another spec there is an error, not overwritten: a comparison resumed with
    other flags would otherwise mix two configurations in one table."""
    path = out_dir / RUN_RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    wanted = {k: v for k, v in spec_record(spec).items() if k not in ANALYSIS_ONLY}
    done = {k: v for k, v in record["spec"].items() if k not in ANALYSIS_ONLY}
    if done != wanted:
        differs = sorted(k for k in wanted if done.get(k) != wanted[k])
        raise BenchError(
            f"{path}: a finished run of another configuration (it differs in {', '.join(differs)}); "
            "resume with the flags that started it, or give another --out"
        )
    latencies = read_latencies(*log_files(out_dir / LATENCY_LOG))
    samples = read_metrics_csv(out_dir / "metrics.csv")
    probe_ms = [float(ms) for ms in record["probe_ms"]]
    return measured(spec, out_dir, latencies, samples, int(record["failed_scrapes"]), int(record["locust_exit_code"]), probe_ms)
