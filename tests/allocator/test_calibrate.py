"""`python -m helmrec.allocator.calibrate` fits every cost-model constant from real timings (a small shape here)."""

from __future__ import annotations

import math

from helmrec.allocator.calibrate import CalibrationShape, measure
from helmrec.allocator.cost_model import CPU_MEASURED


def test_measure_fits_every_constant_from_timings() -> None:
    shape = CalibrationShape(d_model=32, num_layers=1, num_heads=2, d_qk=8, d_v=8, table_rows=20_000)
    out = measure(shape, repeats=1)
    assert set(CPU_MEASURED) <= set(out)
    assert all(math.isfinite(out[key]) for key in CPU_MEASURED)
    assert out["host_gather_row_us"] > 0 and out["pool_gather_row_us"] > 0
    raw = out["raw_prefill_us"]
    assert raw[1024] > raw[4] > 0  # a longer prefill takes longer (the fit's slopes are noisy at this size)
