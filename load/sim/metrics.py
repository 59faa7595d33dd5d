"""Figures of one run over its measured span (after warmup): the per-policy entry of the report.

Refused requests (the router answered RESOURCE_EXHAUSTED) have no latency:
they count in the SLO denominator as misses and never as throughput.
"""

from __future__ import annotations

import numpy as np

from helmrec.load.sim.cluster import RunResult
from helmrec.load.sim.config import SimConfig
from helmrec.workload.traces import Trace


def measured(trace: Trace, config: SimConfig) -> slice:
    """Rows of the requests that arrive after warmup."""
    return trace.window(config.warmup_s, trace.config.duration_s)


def summarize(result: RunResult, trace: Trace, config: SimConfig) -> dict[str, float]:
    """p50_ms, p99_ms, slo_satisfaction, throughput_rps, emb_hit, kv_hit (the keys of docs/reports.md)."""
    rows = measured(trace, config)
    lat = result.latency_ms[rows]
    served = ~np.isnan(lat)
    if not served.any():
        raise ValueError("no request was served after warmup: the run is too short or every request was refused")
    ok = lat[served]
    span = trace.config.duration_s - config.warmup_s
    done = result.done_s
    completed = np.count_nonzero((done >= config.warmup_s) & (done < trace.config.duration_s))
    lookups = float(result.emb_lookups[rows][served].sum())
    return {
        "p50_ms": float(np.percentile(ok, 50)),
        "p99_ms": float(np.percentile(ok, 99)),
        "slo_satisfaction": float(np.count_nonzero(ok <= config.slo_ms)) / lat.shape[0],
        "throughput_rps": completed / span,
        "emb_hit": float(result.emb_hits[rows][served].sum()) / lookups if lookups else 0.0,
        "kv_hit": float(result.kv_hit[rows][served].mean()),
    }


def refused_share(result: RunResult, trace: Trace, config: SimConfig) -> float:
    """Share of measured requests the router refused (every backend at its in-flight limit)."""
    return float(np.isnan(result.latency_ms[measured(trace, config)]).mean())
