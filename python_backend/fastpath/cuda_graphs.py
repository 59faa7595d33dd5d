"""What every graphed step (rank, prefill, extend) shares: bucket rounding and a safe capture.

Capturing a graph must not overlap another thread's CUDA calls (a copy, an
event sync, an allocation): CUDA then invalidates the capture and the request
fails. Graphs are captured lazily, on the first request of a new bucket, while
a pool's background thread may be refilling; so a capture runs under the
owner's lock, which that thread also holds around its CUDA work, and in
"thread_local" capture mode for everything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from helmrec.fastpath.fused_model import FusedHSTU

T = TypeVar("T")


def round_up(n: int, step: int) -> int:
    """n rounded up to a multiple of step."""
    return -(-n // step) * step


def to_device(array: np.ndarray, device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
    """A host array on `device` (into `out` when given) without making the host wait for the GPU.

    A copy from pageable host memory is ordered on the stream and blocks the host until it
    is done, so it waits for every kernel queued before it: a block table copied between
    two graph replays would idle the host for the whole first replay. Staged through
    PyTorch's pinned-memory cache, the copy is queued and the host goes on (the cache
    keeps the staging block until the copy has run)."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    if out is not None:
        return out.copy_(tensor, non_blocking=True)
    return tensor.to(device, non_blocking=True)


def require_cuda(fused: FusedHSTU, owner: str) -> torch.device:
    """The model's device; graphs exist only on CUDA."""
    device = fused.model.item_emb.weight.device
    if device.type != "cuda":
        raise ValueError(f"{owner} needs the model on a CUDA device, got {device}")
    return device


def capture(
    step: Callable[[], T], device: torch.device, lock: contextlib.AbstractContextManager | None
) -> tuple[torch.cuda.CUDAGraph, T]:
    """A CUDA graph of `step` and the output it writes on every replay.

    `step` runs twice on a side stream first (Triton compiles its kernels, the
    allocator settles), then once under capture; all its inputs must be static
    tensors the caller refills before each replay.
    """
    with lock if lock is not None else contextlib.nullcontext():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = step()
    return graph, out
