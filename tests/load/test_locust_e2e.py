"""User story: an operator reproduces a burst workload with Locust against a real tritonserver,
directly and through `helmrec route`, and gets zero failures, Locust's CSVs and exact timings.

Locust runs as a subprocess (`locust -f load/locustfile.py --headless ...`): importing Locust
monkey-patches a process for gevent, which the test process must not suffer.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helmrec.launcher import TritonServer
from helmrec.load.bench.latency import log_files, read_latencies
from helmrec.load.client import infer_inputs
from helmrec.resources import locustfile
from helmrec.router.backend_metrics import BackendReport, parse_report
from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.server import RouterThread

pytestmark = pytest.mark.e2e


def run_locust(
    host: str, out: Path, shape: str, duration_s: float = 4.0, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless", "--only-summary",
        "--host", host, "--csv", str(out / "locust"), "--json-file", str(out / "locust_final"),
        "--latency-csv", str(out / "latency.csv"),
        f"--shape={shape}", f"--shape-duration={duration_s}", "--base-rate=20", "--per-user-rps=4",
        "--trace-users=200", "--hot-users=10", "--mean-history=12", "--candidates=16", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def locust_totals(out: Path) -> tuple[int, int]:
    """Requests and failures in Locust's final statistics (its CSVs are rewritten once a second, so
    they can miss the last second; the JSON file is written at shutdown)."""
    entries = json.loads((out / "locust_final.json").read_text())
    return sum(e["num_requests"] for e in entries), sum(e["num_failures"] for e in entries)


@pytest.fixture(scope="module")
def warm_server(triton_server: TritonServer) -> TritonServer:
    """The session server after one request, so Locust's few seconds are not spent on first-call set-up."""
    arrays = {
        "USER_ID": np.array([1 << 40], np.int64),
        "HISTORY_ITEM_IDS": np.array([1, 2], np.int64),
        "HISTORY_TIMESTAMPS": np.array([0, 60], np.int64),
        "CANDIDATE_ITEM_IDS": np.array([3], np.int64),
    }
    grpcclient.InferenceServerClient(triton_server.grpc_url).infer("hstu_ensemble", infer_inputs(grpcclient, arrays))
    return triton_server


def report(server: TritonServer) -> BackendReport:
    return parse_report(urllib.request.urlopen(server.metrics_url, timeout=5).read().decode())


def check_run(proc: subprocess.CompletedProcess[str], out: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    requests, failures = locust_totals(out)
    assert failures == 0 and requests >= 10, (requests, failures)
    lat = read_latencies(out / "latency.csv")
    assert len(lat) == requests and lat.ok.all()
    # Exact timings: sub-millisecond digits survive (Locust's own stats would round them away).
    assert np.any(lat.latency_ms != np.round(lat.latency_ms))
    with (out / "locust_stats.csv").open() as f:  # Locust's own CSVs are written too
        assert {row["Name"] for row in csv.DictReader(f)} == {"hstu_ensemble", "Aggregated"}
    assert (out / "locust_stats_history.csv").exists() and (out / "locust_failures.csv").exists()


def test_burst_shape_against_one_tritonserver(warm_server: TritonServer, tmp_path: Path) -> None:
    before = report(warm_server)
    proc = run_locust(warm_server.grpc_url, tmp_path, "burst")
    check_run(proc, tmp_path)
    after = report(warm_server)
    # Returning users reused their KV prefix on the server (its own counters, not ours).
    assert (after.kv_hits_total or 0) - (before.kv_hits_total or 0) > 0


@pytest.mark.parametrize("shape", ["steady", "trend"])
def test_shapes_through_the_router(warm_server: TritonServer, tmp_path: Path, shape: str) -> None:
    backend = BackendAddress("127.0.0.1", warm_server.grpc_port, None, warm_server.metrics_port)
    with RouterThread(RouterConfig(backends=(backend,), policy="helm")) as router:
        proc = run_locust(f"grpc://{router.server.grpc_url}", tmp_path, shape, duration_s=3.0)
    check_run(proc, tmp_path)


def test_several_processes_share_the_trace_by_user(warm_server: TritonServer, tmp_path: Path) -> None:
    """`--processes 2`: each worker sends its users' rows and logs them in its own file; together
    they are the requests Locust's master counted, and no user's rows are split over processes
    (a user's history must grow in order for the KV cache to extend it)."""
    proc = run_locust(warm_server.grpc_url, tmp_path, "steady", 4.0, "--processes", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = log_files(tmp_path / "latency.csv")
    assert [p.name for p in parts] == ["latency.part0.csv", "latency.part1.csv"]
    logs = [read_latencies(p) for p in parts]
    assert all(len(log) > 0 for log in logs), [len(log) for log in logs]
    users = [set(log.user_id.tolist()) for log in logs]
    assert [{u % 2 for u in share} for share in users] == [{0}, {1}]
    requests, failures = locust_totals(tmp_path)
    merged = read_latencies(*parts)
    assert failures == 0 and len(merged) == requests == sum(len(log) for log in logs)
    assert np.all(np.diff(merged.start_unix_s) >= 0)


def test_a_host_without_port_is_refused_by_name(tmp_path: Path) -> None:
    proc = run_locust("localhost", tmp_path, "steady", duration_s=1.0)
    assert proc.returncode != 0
    assert "--host 'localhost': expected the gRPC address HOST:PORT" in proc.stdout + proc.stderr
