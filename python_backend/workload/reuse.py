"""How much KV reuse a trace offers: returning shares and the KV working set of returning users.

`python -m helmrec.workload.reuse --workload production` prints, for a few horizons T,
the share of requests whose user sent a request less than T earlier (a KV cache that
keeps every user for T turns exactly those into hits) and the time-averaged KV bytes
of the users seen in the last T (what such a cache must hold), the figures
docs/workload.md states. Per node: a trace at scale 1 is one node's sticky share.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from helmrec.workload.traces import REGIMES, WORKLOADS, Trace, make_trace

HORIZONS_S = (1.0, 10.0, 30.0, 60.0, 120.0)
# KV bytes per history token of the DLRMv3-sized `large` preset: 5 layers x 4 heads x (128 + 128) x 2 B (bf16).
LARGE_KV_TOKEN_BYTES = 5 * 4 * (128 + 128) * 2


def returning_share(trace: Trace, horizon_s: float, since_s: float = 0.0) -> float:
    """Share of the requests at or after `since_s` whose user's previous request is at most `horizon_s` old."""
    rows = trace.t_s >= since_s
    return float((trace.since_prev_s[rows] <= horizon_s).mean()) if rows.any() else 0.0


def working_set_bytes(trace: Trace, horizon_s: float, kv_token_bytes: int, since_s: float = 0.0) -> float:
    """Time-averaged KV bytes of the users with a request in the last `horizon_s`, over [since_s, end).

    A request keeps its user's history (history_len tokens) in the set from its arrival until the
    user's next request or `horizon_s` later, whichever comes first.
    """
    end = trace.config.duration_s
    if not 0.0 <= since_s < end:
        raise ValueError(f"working_set_bytes: since_s must be in [0, duration_s), got {since_s}")
    order = np.argsort(trace.user_id, kind="stable")
    t_sorted = trace.t_s[order]
    same_next = np.zeros(order.shape[0], dtype=bool)
    same_next[:-1] = trace.user_id[order][1:] == trace.user_id[order][:-1]
    next_gap = np.full(order.shape[0], np.inf)
    next_gap[:-1] = np.where(same_next[:-1], t_sorted[1:] - t_sorted[:-1], np.inf)
    start = t_sorted
    stop = np.minimum(start + np.minimum(next_gap, horizon_s), end)
    held = np.maximum(0.0, stop - np.maximum(start, since_s))
    tokens = trace.history_len[order].astype(np.float64)
    return float((tokens * held).sum() * kv_token_bytes / (end - since_s))


def reuse_table(trace: Trace, kv_token_bytes: int, since_s: float, horizons_s: tuple[float, ...] = HORIZONS_S) -> dict:
    """Returning share and working set (GiB) per horizon, plus the trace's size figures."""
    rows = trace.t_s >= since_s
    return {
        "requests": len(trace),
        "rate_per_s": len(trace) / trace.config.duration_s,
        "mean_history_len": float(trace.history_len[rows].mean()),
        "share_at_history_cap": float((trace.history_len[rows] >= trace.config.max_history_len).mean()),
        "distinct_users": int(np.unique(trace.user_id).shape[0]),
        "horizons": [
            {
                "horizon_s": h,
                "returning_share": round(returning_share(trace, h, since_s), 4),
                "working_set_gib": round(working_set_bytes(trace, h, kv_token_bytes, since_s) / 2**30, 2),
            }
            for h in horizons_s
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helmrec.workload.reuse", description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="production")
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--since", type=float, default=60.0, help="count requests from this trace second on")
    parser.add_argument("--kv-token-bytes", type=int, default=LARGE_KV_TOKEN_BYTES)
    args = parser.parse_args(argv)
    out = {
        regime: reuse_table(make_trace(regime, args.seed, workload=args.workload), args.kv_token_bytes, args.since)
        for regime in args.regimes.split(",")
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
