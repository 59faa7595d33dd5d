"""Stage a model repository with a given network's weights.

Tests, benchmarks and multi-node runs each need a repository whose `hstu`
weights they choose (a seeded `tiny` network, a `large` one on the GPU) without
touching the checkout's model_repository/ or its trained weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from python_backend.hstu.config import preset
from python_backend.hstu.model import HSTU
from python_backend.hstu.weights import save

SOURCE = Path(__file__).resolve().parents[2] / "model_repository"
WEIGHTS = Path("hstu") / "1" / "weights.pt"


def stage_repository(target: Path, preset_name: str = "tiny", seed: int = 0, source: Path = SOURCE) -> Path:
    """Copy `source` to `target` and write a seeded, untrained `preset_name` network into it."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("weights.pt", "__pycache__"))
    torch.manual_seed(seed)
    save(HSTU(preset(preset_name)).eval(), target / WEIGHTS)
    return target
