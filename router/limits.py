"""How big a request the router lets in: derived from what the served model accepts.

tritonserver 2.51 has no request-size limit: it buffers whatever arrives (a
200 MB body took it to 1.6 GB), so the router is the guarded front door. The
bound is the largest request the model could accept at all, written in its
most verbose form: a v2 JSON body whose every id is a 20-character int64
("-9223372036854775808") plus its ", " separator. Binary tensors (8 bytes a
value) and gRPC varints (at most 10) are smaller, so no valid request of any
door meets the limit before the model's own length rule does.

The router imports nothing of the model (it never imports torch), so the
default is the `large` preset's limits written here; tests/router/test_limits.py
checks they are still the largest of helmrec.hstu.config.PRESETS.
"""

from __future__ import annotations

# The largest preset (`large`): 16384 history events, 2048 candidates.
MAX_HISTORY_LEN = 16_384
MAX_CANDIDATES = 2_048
# The longest JSON an int64 takes, with its separator.
JSON_BYTES_PER_ID = len("-9223372036854775808, ")
# Tensor names, shapes, datatypes and request parameters around the ids.
ENVELOPE_BYTES = 4_096
# HISTORY_ITEM_IDS, HISTORY_TIMESTAMPS and HISTORY_ACTIONS are each one per history event.
HISTORY_TENSORS = 3


def request_bytes_bound(max_history_len: int, max_candidates: int) -> int:
    """Bytes of the largest valid request (USER_ID, three history tensors, the candidates) as v2 JSON."""
    if max_history_len < 1 or max_candidates < 1:
        raise ValueError(
            f"request_bytes_bound: --max-history ({max_history_len}) and --max-candidates ({max_candidates}) must be >= 1"
        )
    ids = 1 + HISTORY_TENSORS * max_history_len + max_candidates
    return JSON_BYTES_PER_ID * ids + ENVELOPE_BYTES


# 1,130,518 bytes: what --max-request-bytes defaults to.
DEFAULT_MAX_REQUEST_BYTES = request_bytes_bound(MAX_HISTORY_LEN, MAX_CANDIDATES)
