"""The constants of the production-scale workload, each with its source (docs/workload.md discusses them).

Three kinds of numbers, kept apart so each can be replaced by a better one:

- MovieLens-100K fits (`helmrec.load.workload_fit` recomputes them; its test
  fails if these copies drift): how often and how soon users come back.
- MLPerf DLRMv3 sizes (meta-recsys/generative-recommenders, `dlrm_v3/`): history
  lengths, candidates, item table and user counts.
- H200 costs measured by the project (issue 16's table, `PooledRanker`
  in-process, 14000-token histories, 2048 candidates), which set the per-node
  arrival rate through `arrival_rate`.

A ground-floor module: plain numbers and one formula, nothing imported.
"""

from __future__ import annotations

# --- MovieLens-100K (943 users, 100,000 ratings, 1997-98), fitted by helmrec.load.workload_fit -------------
# Share of interactions (a user's ratings within one second) that continue a session (previous
# interaction of the same user less than 30 min before): 1 - 2,793 sessions / 49,439 interactions.
ML_SESSION_RETURN_SHARE = 0.9435
# Quantiles 0, 0.05, ..., 1 of the gap (s) between consecutive interactions of one session.
ML_INTRA_SESSION_GAP_QUANTILES_S = (
    1.0, 1.0, 17.0, 20.0, 23.0, 25.0, 27.0, 29.0, 31.0, 33.0, 36.0,
    39.0, 43.0, 48.0, 54.0, 62.0, 73.0, 92.0, 126.0, 209.0, 1783.0,
)  # fmt: skip
ML_INTRA_SESSION_GAP_MEDIAN_S = 36.0
# Zipf exponent of interactions per user (negated log-log least-squares slope over the 943 users).
ML_USER_ACTIVITY_ZIPF = 0.83
# Standard deviation of log(ratings per user): the spread given to per-user history lengths.
ML_HISTORY_LOG_SIGMA = 0.878

# --- MLPerf DLRMv3 (generative-recommenders dlrm_v3: streaming_synthetic_data.py, configs.py) ---------------
# streaming-100b: 1e9 items x 50 samples / 5e6 users / 100 timestamps = 100 events per user per timestamp;
# a user is sampled in each of the 90 training timestamps with probability 0.7, plus one base timestamp,
# so the history at inference holds (1 + 0.7 * 90) * 100 = 6,400 events on average.
DLRMV3_MEAN_HISTORY_LEN = 6400.0
# The longest history the project measured on the H200 (14000 tokens + 2048 candidates <= max_seq_len 16384).
DLRMV3_MAX_HISTORY_LEN = 14000
DLRMV3_CANDIDATES = 2048  # max_num_candidates_inference
DLRMV3_USERS = 5_000_000  # num_users of streaming-100b
DLRMV3_REFERENCE_GPUS = 8  # the inference reference runs on one host of 8 GPUs (WORLD_SIZE=8)
# Items per node: issue 16's floor (at least 50M rows in host memory); DLRMv3's own table is 1e9 rows.
PRODUCTION_ITEMS = 50_000_000

# --- H200, `large` preset, per request at the workload's mean history (6,400) and 2048 candidates, in a group
# of 32: the served path's peak (hstu_pool groups waiting requests). From the H200 cost table
# (allocator/costs/h200.json, `helmrec calibrate --device cuda`, 2026-12-02): CostModel.service_us x
# batch_factor(kind, 32); tests/load/sim/test_production_costs.py holds these copies to the table.
H200_RETURNING_MS = 1.75  # cached prefix + 1 new event: extend, then rank (2.83 ms alone x 0.62)
H200_FULL_PREFILL_MS = 3.12  # nothing cached (4.64 ms alone x 0.67)


def arrival_rate(
    utilisation: float = 0.7,
    kv_hit: float = 0.5,
    returning_ms: float = H200_RETURNING_MS,
    full_prefill_ms: float = H200_FULL_PREFILL_MS,
) -> float:
    """Requests per second that keep one node at `utilisation` of its grouped (peak) throughput.

    The mean service time is kv_hit * returning_ms + (1 - kv_hit) * full_prefill_ms (a returning
    user's request extends by a few events, the measured +1-event class). With the defaults,
    0.7 / 2.435 ms = 287.5 req/s: an operator sizes the fleet at 70% of a node's measured peak, so
    at quiet times requests run nearly alone (costlier) and queues form before the peak is reached.
    Rerun with another cost table to re-derive.
    """
    if not 0.0 < utilisation < 1.0 or not 0.0 <= kv_hit <= 1.0 or returning_ms <= 0 or full_prefill_ms <= 0:
        raise ValueError("arrival_rate needs 0 < utilisation < 1, 0 <= kv_hit <= 1 and positive costs")
    return 1e3 * utilisation / (kv_hit * returning_ms + (1.0 - kv_hit) * full_prefill_ms)
