"""`helmrec bench-loadgen`: MLPerf LoadGen's Server scenario against a real tritonserver.

LoadGen's own verdict is read from its summary file; the rows add what the node did (its
Triton statistics) and what failed (each distinct message, bounded). On 2 CPU cores and a
few seconds the point is the chain of real parts, not the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helmrec import schema
from helmrec.launcher import TritonServer
from helmrec.load.bench.loadgen import ERROR_KINDS, main, parse_summary, run_target
from helmrec.load.bench.served import Traffic
from helmrec.serving.network import read_limits

pytest.importorskip("mlperf_loadgen")

SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Server
Mode     : PerformanceOnly
Completed samples per second    : 344.41
Result is : INVALID
  Performance constraints satisfied : NO
  Min duration satisfied : Yes
  Min queries satisfied : Yes
  Early stopping satisfied: NO
================================================
Additional Stats
================================================
50.00 percentile latency (ns)   : 9025984
99.00 percentile latency (ns)   : 363828409
"""


def test_summary_gives_the_verdict_the_unmet_criteria_and_the_percentiles() -> None:
    row = parse_summary(SUMMARY)
    assert row["result"] == "INVALID"
    assert row["unmet"] == ["Performance constraints", "Early stopping"]
    assert row["achieved_qps"] == pytest.approx(344.41)
    assert (row["p50_ms"], row["p99_ms"]) == (pytest.approx(9.025984), pytest.approx(363.828409))


@pytest.mark.e2e
def test_bench_loadgen_reports_each_target_the_node_and_the_ceiling(tmp_path: Path) -> None:
    """Two targets of the same QPS (a repeated target keeps its own LoadGen files), the node's
    statistics per run, and the in-process ceiling of the same mix after the server stopped."""
    out, report = tmp_path / "loadgen", tmp_path / "loadgen.json"
    main(["--qps", "15", "15", "--seconds", "1.5", "--users", "8", "--history", "16", "--candidates", "8",
          "--ceiling-seconds", "0.5", "--out", str(out), "--json", str(report)])  # fmt: skip
    result = json.loads(report.read_text())
    assert [r["target_qps"] for r in result["runs"]] == [15.0, 15.0]
    for k, row in enumerate(result["runs"]):
        assert row["result"] in ("VALID", "INVALID") and row["errors"] == 0 and row["error_kinds"] == {}
        assert row["achieved_qps"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        # LoadGen issues at least qps x seconds queries; the node ranked every one of them.
        assert row["pool_executes"] >= 1 and row["pool_group"] * row["pool_executes"] >= 15 * 1.5
        assert row["pool_node_shares"] == [1.0]
        assert (out / f"{k:02d}_qps_15" / "mlperf_log_summary.txt").stat().st_size > 0
    assert result["ceiling"]["mix"] == "grow" and result["ceiling"]["users"] == 8 and result["ceiling"]["rps"] > 0
    if result["max_valid_qps"] is not None:
        assert result["max_valid_share_of_ceiling"] == pytest.approx(result["max_valid_qps"] / result["ceiling"]["rps"])


@pytest.mark.e2e
def test_failed_queries_are_counted_and_say_why(triton_server: TritonServer, tiny_repository: Path, tmp_path: Path) -> None:
    """Every query breaks a rule (too many candidates): each is completed for LoadGen, counted,
    and the server's message, naming the tensor, is kept once with its count."""
    limits = read_limits(tiny_repository / "hstu" / "1" / "weights.pt")
    traffic = Traffic(8, limits.max_candidates + 1, limits.num_items, 4, 0.0, 0.0, seed=0)
    lengths = dict.fromkeys(range(4), traffic.history)
    row = run_target(triton_server.grpc_url, traffic, "grow", lengths, 10.0, 80.0, 1.0, tmp_path, (triton_server.grpc_url,))
    assert row["errors"] >= 10 and row["errors"] == sum(row["error_kinds"].values())
    assert 1 <= len(row["error_kinds"]) <= ERROR_KINDS
    assert all(schema.CANDIDATE_ITEM_IDS in message for message in row["error_kinds"])
    assert row["pool_executes"] >= 1  # refused by hstu_pool's own validation, which answered each


@pytest.mark.e2e
def test_users_go_on_from_the_last_run(triton_server: TritonServer, tiny_repository: Path, tmp_path: Path) -> None:
    """A second run continues each user's history where the first left it, as the server's KV cache
    does: restarting them (a shorter history than the cached one) made every run after the first
    open with a KV miss per user (docs/gpu.md (i))."""
    limits = read_limits(tiny_repository / "hstu" / "1" / "weights.pt")
    traffic = Traffic(8, 8, limits.num_items, limits.max_seq_len - 8, 0.0, 0.0, seed=0)
    lengths = dict.fromkeys(range(4), traffic.history)
    grown = []
    for k in range(2):
        row = run_target(triton_server.grpc_url, traffic, "grow", lengths, 10.0, 80.0, 1.0, tmp_path / str(k))
        assert row["errors"] == 0
        grown.append(sum(lengths.values()) - 4 * traffic.history)
    # Every query of a run is one more event of its user (LoadGen issues at least qps x seconds).
    assert grown[0] >= 10 and grown[1] >= grown[0] + 10
