"""Settings of the shared HBM pool, read once from the model config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

_KEYS = ("pool_bytes", "page_bytes", "alpha", "refill_bandwidth_bytes_per_s", "max_move_pages_per_step")
_SHARE_KEY = "counterfactual_share"  # optional: see PoolConfig


@dataclass(frozen=True)
class PoolConfig:
    """One memory budget, its page size and how fast its split may move.

    `alpha` is the initial share of pages given to the embedding cache; the
    controller moves it later with `set_alpha`. `refill_bandwidth_bytes_per_s`
    caps the background H2D traffic (admission + refill) so it never starves
    the critical-path miss copies of bandwidth. `max_move_pages_per_step`
    bounds one background move step, so a jump of alpha from 0.1 to 0.9 is
    spread over many short steps instead of one long lock hold.
    `counterfactual_share` is the share of the pool more / less for KV at which
    the KV ghost counts the hits the cache would have had: the controller's
    policy reads those counts and was trained at one share (the allocator's
    `COUNTERFACTUAL_SHARE`; a test ties the two), so the pool is told the
    share here instead of importing the controller.
    """

    pool_bytes: int
    page_bytes: int
    alpha: float
    refill_bandwidth_bytes_per_s: float
    max_move_pages_per_step: int
    device: str = "cpu"
    counterfactual_share: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.pool_bytes, bool) or not isinstance(self.pool_bytes, int) or self.pool_bytes <= 0:
            raise ValueError(f"pool_bytes must be a positive int, got {self.pool_bytes!r}")
        if isinstance(self.page_bytes, bool) or not isinstance(self.page_bytes, int) or self.page_bytes <= 0:
            raise ValueError(f"page_bytes must be a positive int, got {self.page_bytes!r}")
        if self.page_bytes > self.pool_bytes:
            raise ValueError(
                f"page_bytes ({self.page_bytes}) must not exceed pool_bytes ({self.pool_bytes}): "
                "the pool needs at least one page"
            )
        if self.page_bytes % 8 != 0:
            raise ValueError(f"page_bytes must be a multiple of 8 so every dtype view stays aligned, got {self.page_bytes}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a finite number in [0, 1], got {self.alpha!r}")
        bw = self.refill_bandwidth_bytes_per_s
        if not (isinstance(bw, (int, float)) and math.isfinite(bw) and bw > 0):
            raise ValueError(f"refill_bandwidth_bytes_per_s must be a finite number > 0, got {bw!r}")
        steps = self.max_move_pages_per_step
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"max_move_pages_per_step must be an int >= 1, got {steps!r}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        share = self.counterfactual_share
        if not (isinstance(share, (int, float)) and math.isfinite(share) and 0.0 < share < 1.0):
            raise ValueError(f"counterfactual_share must be a finite number in (0, 1), got {share!r}")

    @property
    def num_pages(self) -> int:
        """Whole pages in the pool; a tail smaller than a page is never allocated."""
        return self.pool_bytes // self.page_bytes

    @classmethod
    def from_triton_parameters(cls, params: Mapping[str, str], device: str = "cpu") -> PoolConfig:
        """Build from config.pbtxt `parameters` (Triton hands every value over as a string).

        All five keys are required: config.pbtxt is the single place these
        numbers live, so a missing key is a deployment error, not a default.
        `counterfactual_share` is optional: its value is the trained policy's,
        not a deployment's choice, so the default is the one to keep.
        """
        missing = [key for key in _KEYS if key not in params]
        if missing:
            raise ValueError(f"pool parameters missing from the model config: {', '.join(missing)}")
        return cls(
            pool_bytes=_parse_int(params, "pool_bytes"),
            page_bytes=_parse_int(params, "page_bytes"),
            alpha=_parse_float(params, "alpha"),
            refill_bandwidth_bytes_per_s=_parse_float(params, "refill_bandwidth_bytes_per_s"),
            max_move_pages_per_step=_parse_int(params, "max_move_pages_per_step"),
            device=device,
            counterfactual_share=_parse_float(params, _SHARE_KEY) if _SHARE_KEY in params else cls.counterfactual_share,
        )


def _raw(params: Mapping[str, str], key: str) -> str:
    value = params[key]
    if not isinstance(value, str):
        raise ValueError(f"pool parameter {key!r} must arrive as a string, got {type(value).__name__}")
    return value.strip()


def _parse_int(params: Mapping[str, str], key: str) -> int:
    raw = _raw(params, key)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"pool parameter {key!r} must be an integer number of bytes/pages, got {raw!r}") from None


def _parse_float(params: Mapping[str, str], key: str) -> float:
    raw = _raw(params, key)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"pool parameter {key!r} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"pool parameter {key!r} must be finite, got {raw!r}")
    return value
