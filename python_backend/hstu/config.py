"""Sizes and variant of the HSTU network, and the named presets.

The weights file stores the config as a plain dict (`to_dict`), so the server
learns every size from the weights it loads and never from a second copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

VARIANTS = ("research", "production")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"HSTUConfig.{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class HSTUConfig:
    """One HSTU network.

    variant: "research" (Zhai et al. 2024, `research/modeling/sequential/hstu.py`:
        SiLU on u, v, q, k, relative attention bias over positions and log time
        buckets, `y = W_o(u * LN(A v)) + x`) or "production" (DLRMv3 `modules/stu.py`:
        learned input LN, SiLU on u only, `y = x + W_o [u, a, u * LN(a)]`, time and
        position enter as input embeddings instead of an attention bias).
    num_items: valid item ids are 0 .. num_items - 1 (rows of the item table).
    num_actions: valid action ids are 0 .. num_actions - 1 (added to history items).
    max_seq_len: longest history in tokens; also the constant attention normaliser,
        which must not depend on the request's length so that a cached prefix stays valid.
    max_candidates: most candidates ranked in one request.
    num_tasks: outputs per candidate of the multi-task head.
    num_time_buckets: buckets of the time feature (bias in research, embedding in production).
    """

    variant: str
    num_items: int
    num_actions: int
    d_model: int
    num_layers: int
    num_heads: int
    d_qk: int
    d_v: int
    max_seq_len: int
    max_candidates: int
    num_tasks: int
    dropout: float = 0.0
    num_time_buckets: int = 128

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"HSTUConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in (
            "num_items",
            "num_actions",
            "d_model",
            "num_layers",
            "num_heads",
            "d_qk",
            "d_v",
            "max_seq_len",
            "max_candidates",
            "num_tasks",
            "num_time_buckets",
        ):
            _positive_int(name, getattr(self, name))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or not 0.0 <= d < 1.0:
            raise ValueError(f"HSTUConfig.dropout must be a number in [0, 1), got {d!r}")

    @property
    def kv_width(self) -> int:
        """Per token and layer: K of all heads, then V of all heads."""
        return self.num_heads * (self.d_qk + self.d_v)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HSTUConfig:
        """Rebuild a config; unknown or missing keys are an error, not a silent default."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"HSTUConfig.from_dict: unknown keys {unknown}")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"HSTUConfig.from_dict: missing keys {missing}")
        return cls(**dict(data))


PRESETS: dict[str, HSTUConfig] = {
    # CI: small enough that a forward on 2 CPU cores takes milliseconds.
    "tiny": HSTUConfig(
        variant="research",
        num_items=300,
        num_actions=2,
        d_model=32,
        num_layers=2,
        num_heads=2,
        d_qk=16,
        d_v=16,
        max_seq_len=64,
        max_candidates=64,
        num_tasks=2,
    ),
    # Demo: MovieLens-100K raw item ids 1..1682 are valid rows (row 0 unused);
    # length 200 and 2 blocks follow the research MovieLens configs.
    "ml100k": HSTUConfig(
        variant="research",
        num_items=1683,
        num_actions=2,
        d_model=64,
        num_layers=2,
        num_heads=2,
        d_qk=32,
        d_v=32,
        max_seq_len=200,
        max_candidates=128,
        num_tasks=2,
        dropout=0.2,
    ),
    # GPU benchmarks: MLPerf DLRMv3 inference sizes (5 layers, 4 heads,
    # d_qk = d_v = 128, D = 512, 16384 history tokens, 2048 candidates) with a
    # 1e6-row item table instead of DLRMv3's 1e9 rows.
    "large": HSTUConfig(
        variant="production",
        num_items=1_000_000,
        num_actions=2,
        d_model=512,
        num_layers=5,
        num_heads=4,
        d_qk=128,
        d_v=128,
        max_seq_len=16384,
        max_candidates=2048,
        num_tasks=2,
        dropout=0.1,
    ),
}


def preset(name: str) -> HSTUConfig:
    """The named preset; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown HSTU preset {name!r}; known: {sorted(PRESETS)}") from None
