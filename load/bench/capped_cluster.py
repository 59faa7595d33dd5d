"""Benchmark clusters whose nodes carry hstu_pool's `device_memory_bytes` (bench-served and
bench-loadgen with `--servers N`: several tritonservers sharing one GPU each need a cap)."""

from __future__ import annotations

from dataclasses import dataclass

from helmrec.load.bench.cluster import ClusterConfig


@dataclass(frozen=True)
class CappedClusterConfig(ClusterConfig):
    """`ClusterConfig` whose every node caps the GPU memory its allocator reserves (0: no cap).

    A subclass, not a field of ClusterConfig, while cluster.py is being changed elsewhere: fold it in then."""

    device_memory_bytes: int = 0

    def pool_parameters(self) -> dict[str, str]:
        return {**super().pool_parameters(), "device_memory_bytes": str(self.device_memory_bytes)}
