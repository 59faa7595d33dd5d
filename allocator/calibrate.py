"""Fit `CostModel` to the timings of a cost table: the arithmetic half of `helmrec calibrate`.

The measuring half (`helmrec.load.bench.calibrate`) times requests through
`PooledRanker`; it lives above the pool in the layers, which the allocator may not
import. This half is numpy only, so the allocator, the simulators and a reviewer
can refit or check a table without torch or a GPU.

What is fitted, and why so. A request alone (group 1) costs

    overhead + rank_fixed + [k > 0] prefill_fixed + k (prefill_token + prefill_token2 n)
    + c (rank_candidate + rank_candidate_token n) + hit_rows emb_hit_row + miss_rows emb_miss_row
    + n history_token + [0 < k < n] (n - k) reuse_token

for n history tokens of which k are computed now (0 at a KV hit, the new events of a
returning user, n for a new user) and c candidates: `CostModel.service_us`. The row
costs are measured on their own (a gather of r rows at several r, slope per row), and
the rows each cell really gathered (counted by the pool) are subtracted before the
compute terms are fitted, so a cache state the grid did not intend cannot leak into
them. The compute terms are fitted in relative error (every cell counts alike, from a
0.4 ms hit to a 10 ms prefill) and kept >= 0. `overhead + rank_fixed` is one intercept
to the fit; the overhead is measured apart (the pool's Python bookkeeping of a request)
and rank_fixed is the rest.

    python -m helmrec.allocator.calibrate TABLE.json [--out NEW.json]

refits a table from its own raw timings (after a change to the model's form, say).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from helmrec.allocator import cost_table
from helmrec.allocator.cost_model import CostModel

# The compute terms in fit order; the intercept is overhead + rank_fixed.
COMPUTE_TERMS = ("intercept", "prefill_fixed_us", "prefill_token_us", "prefill_token2_us", "rank_candidate_us",
                 "rank_candidate_token_us", "history_token_us", "reuse_token_us")  # fmt: skip


def row_cost(rows: Sequence[int], us: Sequence[float]) -> tuple[float, float]:
    """(fixed us, us per row) of a gather timed at several row counts, kept >= 0: least squares in
    relative error, so the largest gather (where a CPU's fresh output buffer can add page faults)
    does not decide the per-row cost of every smaller one."""
    if len(rows) < 2 or len(rows) != len(us):
        raise ValueError(f"row_cost needs >= 2 (rows, us) points, got {list(rows)} and {list(us)}")
    us_arr = np.asarray(us, float)
    slope, fixed = np.polyfit(np.asarray(rows, float), us_arr, 1, w=1.0 / us_arr)
    return float(max(fixed, 0.0)), float(max(slope, 0.0))


def _design(cells: Sequence[Mapping[str, Any]]) -> np.ndarray:
    n = np.array([c["history"] for c in cells], float)
    k = np.array([c["new_tokens"] for c in cells], float)
    c = np.array([c["candidates"] for c in cells], float)
    extended = np.where((k > 0) & (k < n), n - k, 0.0)
    return np.stack([np.ones_like(n), (k > 0).astype(float), k, k * n, c, c * n, n, extended], axis=1)


def _nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the most negative term is dropped (held at 0)
    and the rest refitted until none is negative. A cost term cannot be negative, and a
    negative slope fitted to noise would make some shape cheaper than a smaller one."""
    keep = np.ones(a.shape[1], bool)
    while True:
        x = np.zeros(a.shape[1])
        x[keep] = np.linalg.lstsq(a[:, keep], b, rcond=None)[0]
        if (x >= 0).all():
            return x
        keep[int(np.argmin(x))] = False


def compute_terms(cells: Sequence[Mapping[str, Any]], emb_hit_row_us: float, emb_miss_row_us: float) -> dict[str, float]:
    """The compute constants of `COMPUTE_TERMS` fitted to the cells marked `fit` (group 1)."""
    used = [c for c in cells if c["fit"]]
    if len(used) < len(COMPUTE_TERMS):
        raise ValueError(f"fit: {len(used)} cells marked fit, need >= {len(COMPUTE_TERMS)} for {len(COMPUTE_TERMS)} terms")
    if {c["kind"] for c in used} != set(cost_table.KINDS):
        raise ValueError(f"fit: the cells must hold every kind {cost_table.KINDS}, got {sorted({c['kind'] for c in used})}")
    t = np.array([c["us_per_request"] - c["emb_hit_rows"] * emb_hit_row_us - c["emb_miss_rows"] * emb_miss_row_us for c in used])
    t = np.maximum(t, 1e-3)
    weight = 1.0 / t
    x = _nonnegative_lstsq(_design(used) * weight[:, None], t * weight)
    return dict(zip(COMPUTE_TERMS, map(float, x)))


def batch_efficiency(cells: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind and group size g: the median over shapes of (per-request cost in groups of g) /
    (cost of the same request alone). Only shapes measured both alone and in groups count."""
    alone = {(c["kind"], c["history"], c["candidates"], c["new_tokens"]): c["us_per_request"] for c in cells if c["group"] == 1}
    ratios: dict[str, dict[int, list[float]]] = {}
    for c in cells:
        key = (c["kind"], c["history"], c["candidates"], c["new_tokens"])
        if c["group"] > 1 and key in alone:
            ratios.setdefault(c["kind"], {}).setdefault(c["group"], []).append(c["us_per_request"] / alone[key])
    return {kind: {"1": 1.0, **{str(g): float(median(r)) for g, r in sorted(groups.items())}} for kind, groups in ratios.items()}


def relative_errors(model: CostModel, cells: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(model - measured) / measured of each cell's per-request cost alone (group-1 cost model)."""
    predicted = np.array(
        [
            float(
                model.service_us(
                    np.array(c["new_tokens"]), np.array(c["history"]), c["candidates"], np.array(c["emb_miss_rows"]),
                    np.array(c["emb_hit_rows"]),
                )
            )
            for c in cells
        ]
    )  # fmt: skip
    measured = np.array([c["us_per_request"] for c in cells])
    return (predicted - measured) / measured


def residual_summary(model: CostModel, cells: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind, over the group-1 cells: median and largest |relative error| of the model, and how
    many cells the fit used (cells it did not use, e.g. the eager long extend, are reported too)."""
    out: dict[str, dict[str, float]] = {}
    for kind in cost_table.KINDS:
        for used in (True, False):
            mine = [c for c in cells if c["kind"] == kind and c["group"] == 1 and c["fit"] is used]
            if mine:
                err = np.abs(relative_errors(model, mine))
                out[kind if used else f"{kind}_not_fitted"] = {
                    "cells": len(mine), "median_abs_rel_err": float(np.median(err)), "max_abs_rel_err": float(err.max())
                }  # fmt: skip
    return out


def fit(
    cells: Sequence[Mapping[str, Any]],
    *,
    emb_hit_row_us: float,
    emb_miss_row_us: float,
    request_overhead_us: float,
    emb_row_bytes: int,
    kv_token_bytes: int,
) -> dict[str, Any]:
    """The `constants`, `batch_efficiency` and `fit` parts of a cost table from its raw cells."""
    terms = compute_terms(cells, emb_hit_row_us, emb_miss_row_us)
    constants = {
        **{key: value for key, value in terms.items() if key != "intercept"},
        "rank_fixed_us": max(0.0, terms["intercept"] - request_overhead_us),
        "emb_miss_row_us": emb_miss_row_us,
        "emb_hit_row_us": emb_hit_row_us,
        "request_overhead_us": request_overhead_us,
        "emb_row_bytes": emb_row_bytes,
        "kv_token_bytes": kv_token_bytes,
    }
    model = CostModel(**constants)
    return {
        "constants": constants,
        "batch_efficiency": batch_efficiency(cells),
        "fit": {"intercept_us": terms["intercept"], "residuals": residual_summary(model, cells)},
    }


def refit(table: Mapping[str, Any]) -> dict[str, Any]:
    """`table` with its constants, batching and fit summary recomputed from its own raw part."""
    raw = table["raw"]
    result = fit(
        raw["requests"],
        emb_hit_row_us=raw["emb_hit_gather"]["row_us"],
        emb_miss_row_us=raw["emb_miss_gather"]["row_us"],
        request_overhead_us=raw["request_overhead"]["us"],
        emb_row_bytes=table["constants"]["emb_row_bytes"],
        kv_token_bytes=table["constants"]["kv_token_bytes"],
    )
    return {**table, **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helmrec.allocator.calibrate", description="refit a cost table from its raw timings"
    )
    parser.add_argument("table", type=Path)
    parser.add_argument("--out", type=Path, help="where to write the refitted table (default: in place)")
    args = parser.parse_args(argv)
    table = json.loads(args.table.read_text())
    cost_table.write(refit(table), args.out or args.table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
