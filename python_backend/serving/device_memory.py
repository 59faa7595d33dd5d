"""`device_memory_bytes`: one server's cap on the GPU memory its PyTorch allocator may reserve.

Several tritonservers share one GPU (docs/gpu.md (i)); without a cap each stub's caching
allocator keeps what its largest group needed, and under overload they filled the GPU
between them. The cap is PyTorch's per-process memory fraction: an allocation past it
raises `torch.cuda.OutOfMemoryError` in this process only, which hstu_pool answers with
an error for that group instead of taking the GPU from its neighbours.

Parsing and the rules are plain functions of strings and byte counts, so they are
tested without Triton or a GPU; `hstu_pool` turns a ValueError into a model error.
"""

from __future__ import annotations

import torch

PARAMETER = "device_memory_bytes"


def parse_device_memory_bytes(raw: str, pool_bytes: int, total_bytes: int | None) -> int:
    """The cap in bytes from the config string; 0 means no cap.

    A nonzero cap must exceed `pool_bytes` (the pool alone is one allocation of that
    size: a cap at or below it could never load the node) and fit the device's
    `total_bytes`. `total_bytes` is None where there is no CUDA device to measure
    (a CPU instance ignores the cap, but a malformed value or one at or below the
    pool is still refused there, so CPU runs of a repository catch what a GPU load would).
    Raises ValueError naming the parameter and the rule broken."""
    try:
        cap = int(raw)
    except ValueError:
        raise ValueError(f"parameter '{PARAMETER}' must be an integer number of bytes (0: no cap), got {raw!r}") from None
    if cap < 0:
        raise ValueError(f"parameter '{PARAMETER}' must be >= 0 (0: no cap), got {cap}")
    if cap == 0:
        return 0
    if cap <= pool_bytes:
        raise ValueError(f"parameter '{PARAMETER}' ({cap}) must exceed pool_bytes ({pool_bytes}): the pool alone would not fit")
    if total_bytes is not None and cap > total_bytes:
        raise ValueError(f"parameter '{PARAMETER}' ({cap}) must not exceed the device's total memory ({total_bytes} bytes)")
    return cap


def total_memory(device: torch.device) -> int | None:
    """The device's memory in bytes; None for a CPU device, where no cap applies."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def apply_cap(cap: int, device: torch.device) -> None:
    """Limit this process's caching allocator on `device` to `cap` bytes of its memory.

    Must run before the pool and the network are allocated, so that they count against
    the cap like everything the allocator reserves later."""
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(device).total_memory, device)


def out_of_memory_message(cap: int) -> str:
    """What every request of a group that ran out of device memory is told (`cap` 0: no cap set)."""
    if cap:
        limit = f"its device memory cap ({PARAMETER} = {cap} bytes, {cap / 2**30:.1f} GiB)"
    else:
        limit = f"device memory ({PARAMETER} not set)"
    return f"hstu_pool: this node ran out of {limit} while ranking this request's group; retry later or on another node"
