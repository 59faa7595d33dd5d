"""Per-request service-time model of one serving node, with the source of every constant.

The node simulator (`allocator/node_model.py`) turns cache hit rates into latency
with this model. The node is one GPU whose HBM pool holds the EMB and KV caches,
with the item table in pinned host DRAM.

Where the numbers come from. The source is a cost table (`allocator/cost_table.py`):
`helmrec calibrate` times requests through `PooledRanker`, the path `hstu_pool`
serves, on a named device, and fits these constants to the timings;
`CostModel.from_table(path)` or `packaged("h200")` / `packaged("cpu")` (the tables
committed under `allocator/costs/`) build the model from one. A table also carries
the batching efficiency of each request kind (`batch_factor`).

The defaults of `CostModel()` are the fallback, kept so that a caller which names no
table behaves as before: an earlier synthetic-layer calibration (HSTU-shaped torch ops,
d_model 256, 4 layers, fp32, one thread on the CI CPU, 2026-11-24; `CPU_MEASURED`)
divided by `H100_COMPUTE_SPEEDUP`, the ratio of the H100's dense BF16 throughput at a
stated utilisation to the FLOP rate reached there, with per-kernel launch overhead in
place of the CPU's per-call Python overhead and the cited PCIe figure for a missed
row's H2D copy. They are estimates, not measurements of a served request.

Only relative costs matter to alpha*: the split trades EMB misses (host gather
+ PCIe per row) against KV misses (recomputing a user's prefix, and gathering
the embeddings of that whole prefix again).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from helmrec.allocator import cost_table

# The fallback's source: the synthetic-layer calibration (median of 7, one thread, fp32, the CI CPU, 2026-11-24).
CPU_MEASURED = {
    "prefill_token_us": 43.78,  # fitted slope of prefill time vs tokens (4..1024 tokens)
    "prefill_token2_us": 0.0889,  # fitted n^2 term (pointwise attention over the prefix)
    "rank_candidate_us": 25.44,  # per candidate scored against a cached history
    "rank_candidate_token_us": 0.0493,  # per candidate x history token (candidate-to-history attention)
    "host_gather_row_us": 0.0762,  # index_select of one random 1 KiB row from a 205 MB host table
    "pool_gather_row_us": 0.0388,  # the same from a cache-resident 8 MiB slab (a pool hit)
}
# That calibration's 1024-token prefill: 7.0 GFLOP (4 layers x (uvqk 537M + out 134M + QK^T 537M + AV 537M)
# FLOP) in 140.2 ms -> 50 GFLOP/s achieved on this CPU.
CPU_ACHIEVED_GFLOPS = 50.0
# NVIDIA H100 SXM5 datasheet: 989.4 TFLOPS dense BF16 tensor core. Utilisation 0.3 is an assumption
# (small-batch HSTU kernels run far below peak; FlashAttention-2 reports 50-70% for large attention).
H100_COMPUTE_SPEEDUP = 989.4e3 * 0.3 / CPU_ACHIEVED_GFLOPS
# PCIe Gen5 x16: 64 GB/s per direction (PCI-SIG spec, the H100 PCIe/SXM host link); ~80% achievable.
PCIE_H2D_BYTES_PER_US = 64e9 * 0.8 / 1e6
# CUDA kernel launch overhead ~5 us each without CUDA graphs (NVIDIA CUDA best-practices guide
# reports microseconds per launch); a prefill or rank pass of 4 layers launches ~10 kernels per layer.
KERNEL_LAUNCH_US = 5.0
KERNELS_PER_PASS = 40


FALLBACK_SOURCE = "fallback: CPU-measured synthetic layer scaled to an H100 (allocator/cost_model.py)"


@dataclass(frozen=True)
class BatchCurve:
    """Per-request cost of a request served in a group of g (one `rank_many` call) over its
    cost alone, measured at a few group sizes; between them it is interpolated in log2(g)
    (groups double in the served path's rank buckets), past the largest it stays flat
    rather than extrapolate a trend nobody measured."""

    groups: tuple[int, ...]
    factors: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.factors) or not self.groups:
            raise ValueError(f"BatchCurve needs one factor per group size, got {self.groups} and {self.factors}")
        if list(self.groups) != sorted(set(self.groups)) or self.groups[0] != 1:
            raise ValueError(f"BatchCurve.groups must rise strictly from 1, got {self.groups}")
        if any(not np.isfinite(f) or f <= 0 for f in self.factors):
            raise ValueError(f"BatchCurve.factors must be finite and > 0, got {self.factors}")

    def at(self, group: float | np.ndarray) -> float | np.ndarray:
        value = np.interp(np.log2(group), np.log2(self.groups), self.factors)
        return float(value) if np.ndim(value) == 0 else value


@dataclass(frozen=True)
class CostModel:
    """Service-time constants of one node (microseconds) and the sizes that turn bytes into rows/tokens.

    `batch_curves` holds, per request kind of `cost_table.KINDS`, how grouping changes a
    request's cost; `source` says where the constants come from (a table's device and
    date, or the fallback)."""

    prefill_fixed_us: float = KERNEL_LAUNCH_US * KERNELS_PER_PASS
    prefill_token_us: float = CPU_MEASURED["prefill_token_us"] / H100_COMPUTE_SPEEDUP
    prefill_token2_us: float = CPU_MEASURED["prefill_token2_us"] / H100_COMPUTE_SPEEDUP
    rank_fixed_us: float = KERNEL_LAUNCH_US * KERNELS_PER_PASS
    rank_candidate_us: float = CPU_MEASURED["rank_candidate_us"] / H100_COMPUTE_SPEEDUP
    rank_candidate_token_us: float = CPU_MEASURED["rank_candidate_token_us"] / H100_COMPUTE_SPEEDUP
    # A missed row: host gather (measured here) + its share of the PCIe copy (cited bandwidth).
    emb_miss_row_us: float = CPU_MEASURED["host_gather_row_us"] + 512 / PCIE_H2D_BYTES_PER_US
    # A hit row is gathered from HBM: 3.35 TB/s (H100 SXM5 datasheet) -> 512 B in 0.00015 us.
    emb_hit_row_us: float = 512 / 3.35e6
    request_overhead_us: float = 60.0  # validation + the Python-backend hop; an assumption, same for every alpha
    emb_row_bytes: int = 512  # d_model 256 x fp16
    kv_token_bytes: int = 4 * 4 * (64 + 64) * 2  # layers x heads x (d_qk + d_v) x fp16 = 4 KiB
    # Measured on the served path only (the fallback's synthetic layer had no pool, so 0 there): every
    # request moves its whole history's K/V through pool pages and the rank step's static buffer, and
    # a returning user's cached K/V is copied once more into the extend step's context and joined to
    # the new tokens; both grow with the history, not with the tokens computed.
    history_token_us: float = 0.0
    reuse_token_us: float = 0.0
    batch_curves: tuple[tuple[str, BatchCurve], ...] = ()
    source: str = FALLBACK_SOURCE

    def __post_init__(self) -> None:
        for name in (*cost_table.TIME_CONSTANTS, *cost_table.SIZE_CONSTANTS):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {value}")
        if self.emb_row_bytes <= 0 or self.kv_token_bytes <= 0:
            raise ValueError("CostModel.emb_row_bytes and kv_token_bytes must be > 0")
        for kind, curve in self.batch_curves:
            if kind not in cost_table.KINDS or not isinstance(curve, BatchCurve):
                raise ValueError(
                    f"CostModel.batch_curves: ({kind!r}, {curve!r}) must be (a kind of {cost_table.KINDS}, a BatchCurve)"
                )

    @classmethod
    def from_table(cls, path: str | Path) -> CostModel:
        """The model a cost table measured (validated first: a broken table names its key and rule)."""
        table = cost_table.read(path)
        curves = tuple(
            (kind, BatchCurve(tuple(sorted(int(g) for g in curve)), tuple(curve[str(g)] for g in sorted(int(g) for g in curve))))
            for kind, curve in table["batch_efficiency"].items()
        )
        source = f"{table['device']}, {table['preset']} {table['dtype']}, {table['date_utc']} ({Path(path).name})"
        return cls(**table["constants"], batch_curves=curves, source=source)

    def batch_factor(self, kind: str, group: float | np.ndarray) -> float | np.ndarray:
        """Per-request cost of a `kind` request in a group of `group` over its cost alone.

        The lead's simulator multiplies `service_us` by it when it serves requests in groups.
        A model without a measured curve for `kind` (the fallback has none) answers 1.0:
        no batching effect is assumed where none was measured, so such a model keeps its
        one-request-at-a-time costs."""
        if kind not in cost_table.KINDS:
            raise ValueError(f"batch_factor: kind must be one of {cost_table.KINDS}, got {kind!r}")
        if np.any(np.asarray(group) < 1):
            raise ValueError(f"batch_factor: group must be >= 1, got {group!r}")
        curve = dict(self.batch_curves).get(kind)
        if curve is None:
            return 1.0 if np.ndim(group) == 0 else np.ones(np.shape(group))
        return curve.at(group)

    def service_us(
        self,
        computed_tokens: np.ndarray,
        history_len: np.ndarray,
        candidates: int,
        emb_miss_rows: np.ndarray,
        emb_hit_rows: np.ndarray,
    ) -> np.ndarray:
        """Service time of requests (broadcasting arrays), in microseconds.

        computed_tokens: history tokens prefilled now (all of them on a KV miss, the new suffix on a hit);
        they attend to the whole history, hence the tokens x history_len term. A request with
        0 < computed_tokens < history_len extends a reused prefix of the other tokens.
        """
        prefill = np.where(computed_tokens > 0, self.prefill_fixed_us, 0.0)
        prefill = prefill + computed_tokens * (self.prefill_token_us + self.prefill_token2_us * history_len)
        rank = self.rank_fixed_us + candidates * (self.rank_candidate_us + self.rank_candidate_token_us * history_len)
        gather = emb_miss_rows * self.emb_miss_row_us + emb_hit_rows * self.emb_hit_row_us
        extended = np.where((computed_tokens > 0) & (computed_tokens < history_len), history_len - computed_tokens, 0)
        moved = history_len * self.history_token_us + extended * self.reuse_token_us
        return self.request_overhead_us + prefill + rank + gather + moved


def packaged_names() -> list[str]:
    """Names of the cost tables shipped in `allocator/costs/` (e.g. "cpu", "h200")."""
    folder = resources.files("helmrec.allocator") / "costs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json")) if folder.is_dir() else []


def packaged(name: str) -> CostModel:
    """The CostModel of the shipped cost table `name`; an unknown name lists the shipped ones."""
    names = packaged_names()
    if name not in names:
        raise ValueError(f"no packaged cost table {name!r}; shipped: {names}")
    with resources.as_file(resources.files("helmrec.allocator") / "costs" / f"{name}.json") as path:
        return CostModel.from_table(path)
