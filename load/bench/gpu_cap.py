"""How much GPU memory each of several servers sharing one GPU may reserve (hstu_pool's
`device_memory_bytes`), for the benchmarks that start them: bench, bench-served, bench-loadgen.

Torch-free at import: the benchmarks' command lines are parsed without it.
"""

from __future__ import annotations

# The share of the GPU's memory that the nodes' caps add up to; the rest is for what no cap sees:
# each process's CUDA context, and the router's and load generators' processes (a benchmark that
# asks torch for the device's size holds a context itself).
AUTO_CAP_SHARE = 0.9


def shared_gpu_cap(device: str, nodes: int) -> int:
    """Each node's cap when `nodes` servers share one GPU: an equal share of `AUTO_CAP_SHARE` of it
    (uncapped, their allocators' caches filled the H200 under overload: docs/gpu.md (i)). One node
    alone, or the CPU, gets none (0)."""
    if device != "cuda" or nodes == 1:
        return 0
    import torch  # noqa: PLC0415 - only a GPU run needs it here

    return int(AUTO_CAP_SHARE * torch.cuda.get_device_properties(0).total_memory) // nodes


def node_cap(given: int | None, device: str, nodes: int) -> int:
    """Each node's `device_memory_bytes`: the operator's `--device-memory-bytes`, else `shared_gpu_cap`."""
    return shared_gpu_cap(device, nodes) if given is None else given
