"""One benchmark run: a cluster up, a headless Locust run through its router, the figures out.

The run's latency figures come from the locustfile's exact per-request log,
its cache figures from the nodes' own metrics (scraped while Locust runs),
so nothing in the result is estimated by the benchmark itself.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helmrec.load.bench.cluster import Cluster, ClusterConfig
from helmrec.load.bench.latency import Latencies, LatencySummary, read_latencies, summarize
from helmrec.load.bench.metrics import CacheTotals, MetricsPoller, MetricsSample, cache_totals
from helmrec.load.bench.workload import WorkloadConfig, workload_flags
from helmrec.resources import locustfile

LOCUSTFILE = locustfile()
# Locust's final statistics (`--json-file` adds .json): written at shutdown, unlike its CSVs,
# which are rewritten once a second and can miss the run's last second.
LOCUST_FINAL = "locust_final"
# Locust's own start-up and shutdown around the shape's duration.
LOCUST_GRACE_S = 120.0


@dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on; two runs with equal specs send the same requests."""

    cluster: ClusterConfig
    workload: WorkloadConfig
    per_user_rps: float = 2.0
    slo_ms: float = 25.0
    metrics_interval_s: float = 0.5


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


class BenchError(RuntimeError):
    """A run that could not produce figures (a process failed); the message says which and why."""


def locust_command(spec: RunSpec, host: str, out_dir: Path, limits: tuple[int, int, int]) -> list[str]:
    num_items, max_history, max_candidates = limits
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", host, "--csv", str(out_dir / "locust"), "--json-file", str(out_dir / LOCUST_FINAL),
        "--latency-csv", str(out_dir / "latency.csv"),
        f"--per-user-rps={spec.per_user_rps}", f"--num-items={num_items}",
        f"--max-history={max_history}", f"--max-candidates={max_candidates}",
        *workload_flags(spec.workload),
    ]  # fmt: skip


def run_once(spec: RunSpec, out_dir: Path) -> RunResult:
    """Start the cluster, replay the workload through the router, stop everything, read the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helmrec-bench-") as tmp, Cluster(spec.cluster, Path(tmp)) as cluster:
        assert cluster.limits is not None
        limits = (cluster.limits.num_items, cluster.limits.max_seq_len, cluster.limits.max_candidates)
        command = locust_command(spec, cluster.router_grpc_url, out_dir, limits)
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
    latency_csv = out_dir / "latency.csv"
    if not latency_csv.exists():
        tail = (out_dir / "locust.log").read_text(errors="replace")[-3000:]
        raise BenchError(f"Locust exited with code {proc.returncode} and wrote no {latency_csv}:\n{tail}")
    latencies = read_latencies(latency_csv)
    if len(latencies) == 0:
        raise BenchError(f"{latency_csv}: Locust sent no request; see {out_dir / 'locust.log'}")
    counted = locust_request_count(out_dir / f"{LOCUST_FINAL}.json")
    if counted != len(latencies):
        raise BenchError(f"{latency_csv}: {len(latencies)} requests logged, but Locust counted {counted}")
    write_metrics_csv(samples, out_dir / "metrics.csv")
    return RunResult(
        spec=spec,
        out_dir=out_dir,
        summary=summarize(latencies, spec.slo_ms),
        caches=cache_totals(samples),
        latencies=latencies,
        samples=tuple(samples),
        failed_scrapes=poller.failed_scrapes,
        locust_exit_code=proc.returncode,
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
