"""Stage a model repository with a given network's weights.

Tests, benchmarks and multi-node runs each need a repository whose `hstu`
weights they choose (a seeded `tiny` network, a `large` one on the GPU) without
touching the checkout's model_repository/ or its trained weights.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from helmrec import schema
from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import save
from helmrec.model_config import get_parameter, set_parameters
from helmrec.resources import model_repository

SOURCE = model_repository()
WEIGHTS = Path(schema.NETWORK_MODEL) / "1" / "weights.pt"


def stage_repository(
    target: Path,
    preset_name: str | None = "tiny",
    seed: int = 0,
    source: Path = SOURCE,
    pool_parameters: Mapping[str, str] | None = None,
    num_items: int | None = None,
) -> Path:
    """Copy `source` to `target`; write a seeded, untrained `preset_name` network into it
    (None keeps the source's trained weights) and override `hstu_pool` parameters
    (e.g. {"alpha": "0.3", "controller": "adaptive"}). `num_items` resizes the preset's
    item table (the host table `hstu_pool` caches rows of), so a benchmark can make
    the catalogue larger than a pool's EMB side."""
    if num_items is not None and not preset_name:
        raise ValueError("stage_repository: num_items resizes a preset's item table; trained weights keep theirs")
    ignore = shutil.ignore_patterns("__pycache__", *(("weights.pt",) if preset_name else ()))
    shutil.copytree(source, target, ignore=ignore)
    if preset_name:
        config = preset(preset_name)
        if num_items is not None:
            config = dataclasses.replace(config, num_items=num_items)
        torch.manual_seed(seed)
        save(HSTU(config).eval(), target / WEIGHTS)
    if pool_parameters:
        set_parameters(target / schema.POOL_MODEL / "config.pbtxt", pool_parameters)
    return target


def control_window_s(repository: Path) -> float:
    """hstu_pool's control window: nodes publish pool metrics once per window, so a
    scrape that must see a run's last requests waits this long after it."""
    return float(get_parameter(repository / schema.POOL_MODEL / "config.pbtxt", "control_interval_ms")) / 1e3
