"""Time features of the two variants, computed from int64 second gaps.

Gaps are differences of int64 timestamps taken before any float conversion:
epoch seconds (~1.7e9) do not survive float32 (24-bit mantissa), their gaps
do. The bucket math then runs in float32, not float64, because TensorRT has
no float64 and the exported graphs must compute the same buckets.
"""

from __future__ import annotations

import torch

# The research code's log base: floor(ln(dt) / 0.301) ~ floor(log2(dt)) buckets.
_LOG_BUCKET_DIVISOR = 0.301


def log_time_bucket(gap_s: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Research variant: `floor(ln(max(|gap|, 1)) / 0.301)` clamped to [0, num_buckets]."""
    g = gap_s.abs().clamp(min=1).to(torch.float32)
    return torch.floor(torch.log(g) / _LOG_BUCKET_DIVISOR).clamp(0, num_buckets).to(torch.int64)


def sqrt_time_bucket(gap_s: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Production variant: `floor(sqrt(max(gap, 0) / 60))` clamped to [0, num_buckets - 1]."""
    g = gap_s.clamp(min=0).to(torch.float32)
    return torch.floor(torch.sqrt(g / 60.0)).clamp(0, num_buckets - 1).to(torch.int64)


def previous_event_gaps(ts: torch.Tensor, start: int) -> torch.Tensor:
    """Gap of each token from `start` on to the event before it (0 for the very first token).

    This is the production variant's prefix-stable replacement for DLRMv3's
    `t_query - t`: it depends only on the token and its predecessor, so the KV
    of a history prefix never changes when the query time or later events do.
    """
    prev = torch.cat([ts[:1], ts[:-1]])  # branch-free, so graphs with a dynamic start export
    return ts[start:] - prev[start:]
