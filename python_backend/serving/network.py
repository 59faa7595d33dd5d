"""Which network a model instance serves, and on which device.

The weights file is the single source of the network's sizes: hstu_pool reads
the request limits from it and hstu/hstu_pool load the network from it, so config.pbtxt
never repeats a number the weights already fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from helmrec.hstu.config import HSTUConfig
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import load
from helmrec.schema import Limits


def resolve_device(requested: str, instance_kind: str, device_id: int) -> torch.device:
    """`HELMREC_DEVICE` (set by `helmrec serve --device`) beats the config's `device` parameter.

    "auto" takes the GPU when torch sees one, which is what an operator running
    the repository in the official Triton container expects.
    """
    choice = os.environ.get("HELMREC_DEVICE", requested) or "auto"
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
        return torch.device("cuda", device_id if instance_kind == "GPU" else 0)
    raise ValueError(f"device must be cpu, cuda or auto, got {choice!r}")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def serving_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The network's dtype: "auto" is bf16 on a GPU (tensor cores, half the KV bytes per
    pool page) and fp32 on the CPU, where bf16 matmuls are slower, not faster."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {requested!r}")
    return DTYPES[requested]


def read_limits(weights: Path) -> Limits:
    """The request limits fixed by a weights file, without building the network."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained weights; run `helmrec train-model` first")
    blob = torch.load(weights, map_location="cpu", mmap=True, weights_only=True)
    return Limits.of(HSTUConfig.from_dict(blob["config"]))


def load_network(weights: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> HSTU:
    """The trained network in eval mode on `device` in `dtype` (no silent random weights: load raises)."""
    return load(weights, device=str(device)).to(dtype).eval()
