"""User story: `helmrec bench` measures a real cluster (a tritonserver, the router, Locust) and
leaves a report, CSVs and plots whose figures agree with the nodes' own metrics.

One node and a few seconds: the point is the whole chain of real processes, not the numbers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helmrec.load.bench.latency import read_latencies

pytestmark = pytest.mark.e2e


def test_single_bench_run_writes_report_csvs_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable, "-m", "helmrec.cli", "bench", "--nodes", "1", "--alpha", "0.3", "--policy", "helm",
        "--shape", "burst", "--duration", "4", "--rate", "15", "--device", "cpu", "--out", str(out),
        "--trace-users", "100", "--hot-users", "10", "--mean-history", "8", "--candidates", "8",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run_dir = out / "burst" / "static_0.3__helm"
    for name in ("report.md", "latency.csv", "timeline.csv", "metrics.csv", "latency.png", "alpha.png",
                 "locust_stats.csv", "locust_final.json", "router.log"):  # fmt: skip
        assert (run_dir / name).stat().st_size > 0, name
    lat = read_latencies(run_dir / "latency.csv")
    summary = json.loads((out / "summary.json").read_text())
    figures = summary["regimes"]["burst"]["policies"]["static 0.3+helm"]
    assert figures["failures"] == 0 and len(lat) > 0
    # The static node held alpha where it was put, as its own metrics port says (to one page:
    # a 1 MiB pool of 16 KiB pages has 64 pages).
    with (run_dir / "metrics.csv").open() as f:
        alphas = {float(row["alpha"]) for row in csv.DictReader(f)}
    assert len(alphas) == 1 and abs(alphas.pop() - 0.3) <= 1 / 64
    # Every request went through the node: its KV lookups counted them all (plus the warm-up).
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    looked_up = float(rows[-1]["kv_requests_total"]) - float(rows[0]["kv_requests_total"])
    assert looked_up == len(lat)
    assert 0.0 <= figures["kv_hit"] <= 1.0 and figures["p99_ms"] >= figures["p50_ms"] > 0
    assert "static 0.3+helm" in (out / "report.md").read_text()
