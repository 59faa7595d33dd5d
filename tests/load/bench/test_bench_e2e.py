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
    out, costs = tmp_path / "bench", tmp_path / "tiny_cpu.json"
    calibrate = [sys.executable, "-m", "helmrec.cli", "calibrate", "--device", "cpu", "--preset", "tiny", "--quick",
                 "--out", str(costs)]  # fmt: skip
    subprocess.run(calibrate, capture_output=True, text=True, timeout=300, check=True)
    command = [
        sys.executable, "-m", "helmrec.cli", "bench", "--nodes", "1", "--alpha", "0.3", "--policy", "helm",
        "--shape", "burst", "--duration", "4", "--rate", "15", "--device", "cpu", "--out", str(out),
        "--trace-users", "100", "--hot-users", "10", "--mean-history", "8", "--candidates", "8",
        "--costs", str(costs), "--warmup", "1",
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
    # The simulator's figures for the same run sit beside the measured ones: the same trace (so the
    # same KV outcome of every returning user on the one node) and the static alpha held.
    predicted = figures["predicted"]
    assert predicted["mean_alpha"] == 0.3 and predicted["refused"] == 0.0
    # The served path's own time (the probe's median less the node's service) is in every simulated latency.
    probe = json.loads((run_dir / "run.json").read_text())["probe_ms"]
    assert len(probe) == 20 and 0.0 < predicted["path_ms"] < max(probe) and predicted["p50_ms"] > predicted["path_ms"]
    # (Within 0.1: the nodes publish their counters once a 1 s window, so the cut after --warmup 1 in a
    # 4 s run is window-granular on the measured side.)
    assert abs(predicted["kv_hit"] - figures["kv_hit"]) < 0.1, (predicted["kv_hit"], figures["kv_hit"])
    assert "Measured vs simulated" in (out / "report.md").read_text()
    # --warmup 1: the figures leave out the first second's requests (the logs and plots keep them).
    with (out / "runs.csv").open() as f:
        assert int(next(csv.DictReader(f))["requests"]) == int((lat.t_s >= 1.0).sum()) < len(lat)


def bench(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "helmrec.cli", "bench", "--alpha", "0.2", "--policy", "helm", "--nodes", "1",
        "--shape", "steady", "--shape", "burst", "--duration", "3", "--rate", "15", "--device", "cpu",
        "--out", str(out), "--trace-users", "100", "--hot-users", "10", "--mean-history", "8", "--candidates", "8",
        "--processes", "2", "--keep-servers", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_shapes_share_servers_and_a_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    """`--keep-servers --processes 2`, then `--resume`: the user story of a GPU comparison spread over
    several commands of a few minutes each (one system here: `--compare` runs each system the same way)."""
    out = tmp_path / "bench"
    first = bench(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = {regime: out / regime / "static_0.2__helm" for regime in ("steady", "burst")}
    for regime, run_dir in runs.items():
        parts = sorted(p.name for p in run_dir.glob("latency*.csv"))
        assert parts == ["latency.part0.csv", "latency.part1.csv"], parts  # one log per Locust worker
        users = read_latencies(*(run_dir / p for p in parts)).user_id
        # The second shape on the same servers sends users none of the first shape's run sent.
        assert (users >= 1 << 32).all() if regime == "burst" else (users < 1 << 32).all()
    # One start of the nodes for both shapes: the second run's counters start where the first's ended.
    steady_end = float(metrics_rows(runs["steady"])[-1]["kv_requests_total"])
    burst_start = float(metrics_rows(runs["burst"])[0]["kv_requests_total"])
    assert burst_start >= steady_end > 0
    summary = json.loads((out / "summary.json").read_text())

    again = bench(out, "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("kept from an earlier command") == 2
    assert json.loads((out / "summary.json").read_text()) == summary

    (runs["burst"] / "run.json").unlink()  # as if the command had stopped there
    rest = bench(out, "--resume")
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    assert rest.stdout.count("kept from an earlier command") == 1
    assert (runs["burst"] / "run.json").exists()

    # The lead-in is how the logs are read, not what ran: another --warmup reads the same runs anew.
    reread = bench(out, "--resume", "--warmup", "1")
    assert reread.returncode == 0 and reread.stdout.count("kept from an earlier command") == 2, reread.stdout[-3000:]

    other = bench(out, "--resume", "--rate", "20")
    assert other.returncode == 1
    assert "a finished run of another configuration (it differs in workload)" in " ".join(other.stdout.split())
