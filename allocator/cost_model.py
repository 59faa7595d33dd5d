"""Per-request service-time model of one serving node, with the source of every constant.

The node simulator (`allocator/node_model.py`) turns cache hit rates into latency
with this model. The node modelled is the design's target: one H100 whose HBM
pool holds the EMB and KV caches, with the item table in pinned host DRAM.

Where the numbers come from. `python -m helmrec.allocator.calibrate` times real torch
ops of HSTU layer shape (d_model 256, 4 layers, 4 heads, d_qk = d_v = 64) on
this CPU; its output on 2026-11-24 is in `CPU_MEASURED` below. This CI machine
has no GPU, so the compute constants of the H100 node are the measured CPU
costs divided by `H100_COMPUTE_SPEEDUP`, the ratio of the H100's dense BF16
throughput at a stated utilisation to the FLOP rate calibrate achieved here.
Per-kernel launch overhead replaces the CPU's per-call Python overhead. The
host-side gather of a missed row is measured here (it runs on the host CPU in
the real node too); its H2D copy uses the cited PCIe figure.

`python -m helmrec.allocator.calibrate --device cuda` measured the EMB row costs on an
H100 host within 10% of the values below (docs/allocator.md, "Gaps"); its
compute timings there are launch-bound at this shape, so they cannot replace
the scaled per-token costs.

Only relative costs matter to alpha*: the split trades EMB misses (host gather
+ PCIe per row) against KV misses (recomputing a user's prefix, and gathering
the embeddings of that whole prefix again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Output of `python -m helmrec.allocator.calibrate` (median of 7, one thread, fp32, this CPU, 2026-11-24).
CPU_MEASURED = {
    "prefill_token_us": 43.78,  # fitted slope of prefill time vs tokens (4..1024 tokens)
    "prefill_token2_us": 0.0889,  # fitted n^2 term (pointwise attention over the prefix)
    "rank_candidate_us": 25.44,  # per candidate scored against a cached history
    "rank_candidate_token_us": 0.0493,  # per candidate x history token (candidate-to-history attention)
    "host_gather_row_us": 0.0762,  # index_select of one random 1 KiB row from a 205 MB host table
    "pool_gather_row_us": 0.0388,  # the same from a cache-resident 8 MiB slab (a pool hit)
}
# calibrate's 1024-token prefill: 7.0 GFLOP (4 layers x (uvqk 537M + out 134M + QK^T 537M + AV 537M)
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


@dataclass(frozen=True)
class CostModel:
    """Service-time constants of one node (microseconds) and the sizes that turn bytes into rows/tokens."""

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

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value < 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {value}")
        if self.emb_row_bytes <= 0 or self.kv_token_bytes <= 0:
            raise ValueError("CostModel.emb_row_bytes and kv_token_bytes must be > 0")

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
        they attend to the whole history, hence the tokens x history_len term.
        """
        prefill = np.where(computed_tokens > 0, self.prefill_fixed_us, 0.0)
        prefill = prefill + computed_tokens * (self.prefill_token_us + self.prefill_token2_us * history_len)
        rank = self.rank_fixed_us + candidates * (self.rank_candidate_us + self.rank_candidate_token_us * history_len)
        gather = emb_miss_rows * self.emb_miss_row_us + emb_hit_rows * self.emb_hit_row_us
        return self.request_overhead_us + prefill + rank + gather
