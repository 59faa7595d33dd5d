"""Stage a model repository with a given network's weights.

Tests, benchmarks and multi-node runs each need a repository whose `hstu`
weights they choose (a seeded `tiny` network, a `large` one on the GPU) without
touching the checkout's model_repository/ or its trained weights.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import save
from helmrec.resources import model_repository

SOURCE = model_repository()
WEIGHTS = Path("hstu") / "1" / "weights.pt"


def stage_repository(
    target: Path,
    preset_name: str | None = "tiny",
    seed: int = 0,
    source: Path = SOURCE,
    pool_parameters: Mapping[str, str] | None = None,
) -> Path:
    """Copy `source` to `target`; write a seeded, untrained `preset_name` network into it
    (None keeps the source's trained weights) and override `hstu_pool` parameters
    (e.g. {"alpha": "0.3", "controller": "adaptive"})."""
    ignore = shutil.ignore_patterns("__pycache__", *(("weights.pt",) if preset_name else ()))
    shutil.copytree(source, target, ignore=ignore)
    if preset_name:
        torch.manual_seed(seed)
        save(HSTU(preset(preset_name)).eval(), target / WEIGHTS)
    if pool_parameters:
        set_parameters(target / "hstu_pool" / "config.pbtxt", pool_parameters)
    return target


def _parameter_pattern(key: str) -> re.Pattern[str]:
    return re.compile(r'(key: "' + re.escape(key) + r'" value: \{ string_value: ")([^"]*)(")')


def get_parameter(config: Path, key: str) -> str:
    """The string value of a `parameters` entry of a config.pbtxt; KeyError when absent."""
    match = _parameter_pattern(key).search(config.read_text())
    if match is None:
        raise KeyError(f"{config}: no parameter {key!r}")
    return match.group(2)


def control_window_s(repository: Path) -> float:
    """hstu_pool's control window: nodes publish pool metrics once per window, so a
    scrape that must see a run's last requests waits this long after it."""
    return float(get_parameter(repository / "hstu_pool" / "config.pbtxt", "control_interval_ms")) / 1e3


def set_parameters(config: Path, values: Mapping[str, str]) -> None:
    """Set existing `parameters` entries of a config.pbtxt; an unknown key is an error, not an addition."""
    text = config.read_text()
    for key, value in values.items():
        text, count = _parameter_pattern(key).subn(lambda m: m.group(1) + str(value) + m.group(3), text)
        if count != 1:
            raise KeyError(f"{config}: no parameter {key!r} to set")
    config.write_text(text)
