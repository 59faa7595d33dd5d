"""`helmrec calibrate`: the fit recovers known costs, and a quick CPU run through PooledRanker
writes a table that `CostModel.from_table` reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helmrec.allocator import calibrate, cost_table
from helmrec.allocator.cost_model import CostModel
from helmrec.cli import main

TRUE = CostModel(
    prefill_fixed_us=150.0, prefill_token_us=0.2, prefill_token2_us=1e-5, rank_fixed_us=300.0, rank_candidate_us=0.3,
    rank_candidate_token_us=2e-4, emb_miss_row_us=0.5, emb_hit_row_us=0.01, request_overhead_us=200.0,
    emb_row_bytes=1024, kv_token_bytes=10240, history_token_us=0.02, reuse_token_us=0.15,
)  # fmt: skip


def _cells(model: CostModel, miss_rows: float = 0.0) -> list[dict]:
    """Group-1 cells of every kind on a grid, timed exactly as `model` says (hit rows = rows looked up)."""
    cells = []
    for n in (512, 2048, 8192):
        for c in (256, 2048):
            for kind, k in (("hit", 0), ("extend", 1), ("extend", 16), ("prefill", n)):
                hit_rows = k + c - miss_rows
                us = float(model.service_us(np.array(k), np.array(n), c, np.array(miss_rows), np.array(hit_rows)))
                cells.append({"kind": kind, "history": n, "candidates": c, "new_tokens": k, "group": 1, "us_per_request": us,
                              "emb_hit_rows": hit_rows, "emb_miss_rows": miss_rows, "fit": True})  # fmt: skip
    return cells


def test_the_fit_recovers_the_costs_that_made_the_timings() -> None:
    cells = _cells(TRUE, miss_rows=40.0)
    out = calibrate.fit(cells, emb_hit_row_us=0.01, emb_miss_row_us=0.5, request_overhead_us=200.0, emb_row_bytes=1024,
                        kv_token_bytes=10240)  # fmt: skip
    for key in cost_table.TIME_CONSTANTS:
        assert out["constants"][key] == pytest.approx(getattr(TRUE, key), rel=1e-6, abs=1e-9), key
    assert all(s["max_abs_rel_err"] < 1e-9 for s in out["fit"]["residuals"].values())


def test_the_fit_keeps_every_term_nonnegative_and_says_how_far_off_it_is() -> None:
    """Timings no >= 0 model can meet (a longer history made cheaper): no term goes negative, and
    the residual summary shows the misfit instead of hiding it."""
    cells = _cells(TRUE)
    for cell in cells:
        cell["us_per_request"] *= 1.0 if cell["history"] < 8192 else 0.3
    terms = calibrate.compute_terms(cells, 0.01, 0.5)
    assert all(v >= 0 for v in terms.values())
    fitted = {k: v for k, v in terms.items() if k != "intercept"}
    model = CostModel(**{**{k: getattr(TRUE, k) for k in cost_table.TIME_CONSTANTS}, **fitted})
    assert np.abs(calibrate.relative_errors(model, cells)).max() > 0.2


def test_batch_efficiency_is_the_median_ratio_to_the_same_request_alone() -> None:
    base = {"kind": "hit", "candidates": 64, "new_tokens": 0, "emb_hit_rows": 0.0, "emb_miss_rows": 0.0}
    cells = [
        {**base, "history": 100, "group": 1, "us_per_request": 100.0, "fit": True},
        {**base, "history": 200, "group": 1, "us_per_request": 200.0, "fit": True},
        {**base, "history": 100, "group": 8, "us_per_request": 50.0, "fit": False},
        {**base, "history": 200, "group": 8, "us_per_request": 60.0, "fit": False},
        {**base, "history": 300, "group": 8, "us_per_request": 10.0, "fit": False},  # never measured alone: ignored
    ]
    assert calibrate.batch_efficiency(cells) == {"hit": {"1": 1.0, "8": pytest.approx(0.4)}}


def test_row_cost_is_the_slope_of_the_gather() -> None:
    assert calibrate.row_cost([256, 2048, 16384], [12.8 + 5.0, 102.4 + 5.0, 819.2 + 5.0]) == pytest.approx((5.0, 0.05))
    with pytest.raises(ValueError, match="row_cost needs >= 2"):
        calibrate.row_cost([256], [1.0])


def test_quick_cpu_calibration_writes_a_table_that_round_trips(tmp_path: Path) -> None:
    """Through the CLI: PooledRanker on the tiny preset, every kind alone and in groups; the miss
    gather over a separate host table of --host-table-rows, the path the GPU run takes at 2^26 rows."""
    out = tmp_path / "cpu.json"
    argv = ["calibrate", "--device", "cpu", "--preset", "tiny", "--quick", "--host-table-rows", "4096", "--out", str(out)]
    assert main(argv) == 0
    table = json.loads(out.read_text())
    cost_table.validate(table)
    model = CostModel.from_table(out)
    for key, value in table["constants"].items():
        assert getattr(model, key) == value
    assert model.emb_row_bytes == 32 * 4 and model.kv_token_bytes == 2 * 2 * (16 + 16) * 4  # tiny, fp32
    assert {c["kind"] for c in table["raw"]["requests"]} == set(cost_table.KINDS)
    assert {c["group"] for c in table["raw"]["requests"]} == {1, 4}
    assert all(c["emb_miss_rows"] == 0 for c in table["raw"]["requests"])  # the hot set was admitted
    assert set(table["batch_efficiency"]) == set(cost_table.KINDS)
    assert model.batch_factor("hit", 4) == pytest.approx(table["batch_efficiency"]["hit"]["4"])
    assert table["raw"]["emb_check"]["cold"]["miss_rows"] == table["raw"]["emb_check"]["candidates"]
    assert model.source.startswith(table["device"])
    assert table["raw"]["emb_miss_gather"]["table_rows"] == 4096


def test_a_long_extend_is_kept_but_not_fitted_where_graphs_serve_the_short_ones() -> None:
    """On a GPU a returning user with more than the extend graphs' max_new events runs eagerly: the
    cell is measured and labelled so, and the fit leaves it out (the label logic of the cuda run)."""
    import dataclasses

    import torch

    from helmrec.hstu.config import preset
    from helmrec.load.bench.calibrate import EXTEND_GRAPH_MAX_NEW, Users, build_model, measure_cell
    from helmrec.pool.config import PoolConfig
    from helmrec.pool.ranker import PooledRanker

    cfg = dataclasses.replace(preset("tiny"), max_seq_len=EXTEND_GRAPH_MAX_NEW + 40)
    model = build_model(cfg, torch.device("cpu"), torch.float32)
    with PooledRanker(model, PoolConfig(4 << 20, 4096, 0.2, 1e10, 64), background_interval_s=None) as ranker:
        users, sync = Users(cfg, 200), lambda: None
        long = measure_cell(ranker, users, "extend", cfg.max_seq_len, 8, EXTEND_GRAPH_MAX_NEW + 1, 1, 1, sync, graphs=True)
        short = measure_cell(ranker, users, "extend", cfg.max_seq_len, 8, 16, 1, 1, sync, graphs=True)
        on_cpu = measure_cell(ranker, users, "extend", cfg.max_seq_len, 8, EXTEND_GRAPH_MAX_NEW + 1, 1, 1, sync, graphs=False)
    assert (long["path"], long["fit"]) == ("eager", False)
    assert (short["path"], short["fit"]) == ("graphed", True)
    assert (on_cpu["path"], on_cpu["fit"]) == ("eager", True)
