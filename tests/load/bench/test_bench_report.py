"""`helmrec bench` reports: best static alpha, P99 reduction, summary.json keys, plots and CSVs.

Built from synthetic run results (exact latencies, scripted metrics scrapes),
so the figures the report must print are known in advance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helmrec.allocator.cost_model import CostModel
from helmrec.load.bench.cli import parse_alphas
from helmrec.load.bench.cluster import ClusterConfig
from helmrec.load.bench.latency import Latencies, summarize
from helmrec.load.bench.metrics import MetricsSample, cache_totals
from helmrec.load.bench.predict import Costs, PredictionError
from helmrec.load.bench.report import Comparison, alpha_series, best_static, compare_table, write_run, write_summary
from helmrec.load.bench.run import RunResult, RunSpec
from helmrec.load.bench.workload import WorkloadConfig
from helmrec.router.backend_metrics import BackendReport


def fake_run(tmp: Path, regime: str, alpha: str, policy: str, latency_ms: np.ndarray) -> RunResult:
    n = latency_ms.size
    start = 1_000.0 + np.arange(n) * 0.05
    lat = Latencies(start, latency_ms, np.arange(n) % 5, np.full(n, 4), np.ones(n, bool))
    spec = RunSpec(ClusterConfig(alpha=alpha, policy=policy), WorkloadConfig(regime=regime), slo_ms=25.0)
    samples = [
        MetricsSample(1_000.0 + t, node, BackendReport(alpha=0.3 + 0.1 * t, kv_requests_total=10 * t, kv_hits_total=4 * t))
        for t in range(3)
        for node in range(2)
    ]
    out = tmp / regime / ClusterConfig(alpha=alpha, policy=policy).label.replace(" ", "_").replace("+", "__")
    out.mkdir(parents=True)
    return RunResult(spec, out, summarize(lat, 25.0), cache_totals(samples), lat, tuple(samples), 0, 0)


def test_compare_picks_the_lowest_p99_static_and_reports_the_reduction(tmp_path: Path) -> None:
    fast, slow = np.linspace(1, 20, 200), np.linspace(1, 40, 200)
    statics = [
        fake_run(tmp_path, "burst", "0.2", "round_robin", slow),
        fake_run(tmp_path, "burst", "0.8", "round_robin", fast),
    ]
    adaptive = fake_run(tmp_path, "burst", "adaptive", "helm", fast * 0.5)
    assert best_static(statics) is statics[1]
    comp = Comparison("burst", best_static(statics), adaptive)
    assert comp.p99_reduction == pytest.approx(0.5)
    table = compare_table([comp], 25.0)
    assert table.splitlines()[-1] == "mean P99 reduction of adaptive vs best static over 1 regimes (SLO 25 ms): 50.0%"
    assert "static 0.8+round_robin" in table and "adaptive+helm" in table

    runs = [*statics, adaptive]
    for r in runs:
        write_run(r)
        for name in ("report.md", "timeline.csv", "latency.png", "alpha.png"):
            assert (r.out_dir / name).stat().st_size > 0, name
    printed = write_summary(tmp_path, runs, [comp], "helmrec bench --compare")
    assert printed == table
    summary = json.loads((tmp_path / "summary.json").read_text())
    burst = summary["regimes"]["burst"]
    assert summary["nodes"] == 2 and summary["slo_ms"] == 25.0
    assert burst["p99_reduction_vs_best_static"] == pytest.approx(0.5)
    assert burst["best_static_alpha"] == 0.8
    assert burst["slo_satisfaction"] == 1.0  # every adaptive latency is under 25 ms
    assert set(burst["policies"]) == {"static 0.2+round_robin", "static 0.8+round_robin", "adaptive+helm"}
    assert set(burst["policies"]["adaptive+helm"]) == {
        "p50_ms", "p99_ms", "slo_satisfaction", "throughput_rps", "emb_hit", "kv_hit", "failures"
    }  # fmt: skip
    assert burst["policies"]["adaptive+helm"]["kv_hit"] == pytest.approx(0.4)
    with (tmp_path / "runs.csv").open() as f:
        assert [row["system"] for row in csv.DictReader(f)] == [r.spec.cluster.label for r in runs]
    assert "(burst/adaptive__helm/report.md)" in (tmp_path / "report.md").read_text()


def test_alpha_over_time_is_per_node_from_the_first_request(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "steady", "adaptive", "helm", np.full(10, 5.0))
    series = alpha_series(run)
    assert sorted(series) == [0, 1]
    ts, alphas = series[1]
    np.testing.assert_allclose(ts, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(alphas, [0.3, 0.4, 0.5])


def test_bad_bench_settings_name_the_flag_and_rule() -> None:
    assert parse_alphas("0.2, 0.8") == ("0.2", "0.8")
    with pytest.raises(ValueError, match="ClusterConfig.alpha must be in \\[0, 1\\], got 1.5"):
        parse_alphas("0.2,1.5")
    with pytest.raises(ValueError, match="give at least one alpha"):
        parse_alphas(" , ")
    with pytest.raises(ValueError, match="'adaptive' or a number"):
        ClusterConfig(alpha="auto")
    with pytest.raises(ValueError, match="ClusterConfig.policy must be one of"):
        ClusterConfig(policy="random")
    with pytest.raises(ValueError, match="no static-alpha run"):
        best_static([])
    assert ClusterConfig(alpha="0.25").pool_parameters() == {"controller": "static", "pool_bytes": "1048576", "alpha": "0.25"}
    assert ClusterConfig().pool_parameters() == {"controller": "adaptive", "pool_bytes": "1048576"}


def test_simulated_figures_sit_beside_the_measured_and_disagreements_are_flagged(tmp_path: Path) -> None:
    static = fake_run(tmp_path, "burst", "0.5", "round_robin", np.linspace(1, 20, 200))
    adaptive = fake_run(tmp_path, "burst", "adaptive", "helm", np.linspace(1, 10, 200))
    comp = Comparison("burst", static, adaptive)
    sim = {"p50_ms": 1.0, "slo_satisfaction": 1.0, "throughput_rps": 20.0, "emb_hit": 0.9, "kv_hit": 0.4,
           "mean_alpha": 0.5, "refused": 0.0, "path_ms": 4.0}  # fmt: skip
    predictions = {static.out_dir: {**sim, "p99_ms": static.summary.p99_ms * 1.1},
                   adaptive.out_dir: {**sim, "p99_ms": adaptive.summary.p99_ms * 0.5}}  # fmt: skip
    write_summary(tmp_path, [static, adaptive], [comp], "helmrec bench --compare --costs t.json", predictions)
    policies = json.loads((tmp_path / "summary.json").read_text())["regimes"]["burst"]["policies"]
    assert policies["adaptive+helm"]["predicted"]["p99_ms"] == pytest.approx(adaptive.summary.p99_ms * 0.5)
    report = (tmp_path / "report.md").read_text()
    rows = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| burst |")}
    assert "1.10 |" in rows["static 0.5+round_robin"] and "off by more" not in rows["static 0.5+round_robin"]
    assert "0.50 (off by more than 20%)" in rows["adaptive+helm"]
    measured = comp.p99_reduction
    simulated = 1.0 - 0.5 * adaptive.summary.p99_ms / (1.1 * static.summary.p99_ms)
    assert f"measured {measured:.1%}, simulated {simulated:.1%}" in report


def test_a_cost_table_of_another_network_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    from helmrec.cli import main

    assert main(["bench", "--costs", str(tmp_path / "absent.json"), "--out", str(tmp_path / "o")]) == 2
    costs = Costs(CostModel(), "small", "cpu", tmp_path / "small.json")
    with pytest.raises(PredictionError, match="measured on preset 'small', the nodes serve 'tiny'"):
        costs.check("tiny")
