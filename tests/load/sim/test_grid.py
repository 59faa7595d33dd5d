"""`helmrec sim` writes the docs/reports.md shape and a Markdown report from a real (tiny) grid."""

from __future__ import annotations

import json

from helmrec.cli import main
from tests.load.sim.test_cluster import write_policy

POLICY_KEYS = {"p50_ms", "p99_ms", "slo_satisfaction", "throughput_rps", "emb_hit", "kv_hit"}


def test_sim_cli_writes_report_json_and_markdown(tmp_path, capsys) -> None:
    policy = write_policy(tmp_path / "policy.npz", action=-0.2)
    out, doc = tmp_path / "sim.json", tmp_path / "docs" / "sim.md"
    argv = ["sim", "--quick", "--regimes", "steady", "--workers", "1",
            "--policy", str(policy), "--json", str(out), "--report", str(doc)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["nodes"] == 2 and set(report["regimes"]) == {"steady"}
    r = report["regimes"]["steady"]
    statics = {f"static_{p}" for p in ("round_robin", "least_loaded", "kv_aware", "emb_aware", "helm")}
    assert set(r["policies"]) == statics | {"ppo", "full"}
    for figures in r["policies"].values():
        assert set(figures) == POLICY_KEYS
        assert 0.0 <= figures["kv_hit"] <= 1.0 and figures["p50_ms"] <= figures["p99_ms"]
    best = min(r["policies"][s]["p99_ms"] for s in statics)
    assert r["p99_reduction_vs_best_static"] == 1.0 - r["policies"]["full"]["p99_ms"] / best
    assert r["slo_satisfaction"] == r["policies"]["full"]["slo_satisfaction"]
    assert 0.0 <= r["alpha_gap"] <= 1.0
    assert set(r["routing_ablation"]) == {"emb_aware", "kv_aware", "helm"}
    assert report["run_time_s"] > 0
    text = doc.read_text()
    assert "## Against the paper" in text and "| steady |" in text
    assert (doc.parent / "sim_alpha.png").stat().st_size > 0 and (doc.parent / "sim_hits.png").stat().st_size > 0
    # A hand-written discussion survives a re-render.
    doc.write_text(text.replace("(none yet)", "Kept by hand."))
    assert main(argv) == 0
    assert "Kept by hand." in doc.read_text()
    assert "worst-regime P99 reduction" in capsys.readouterr().out
