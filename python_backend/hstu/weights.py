"""Weights file: `torch.save({"config": HSTUConfig.to_dict(), "state": state_dict})`.

The config travels with the weights so a server can never pair weights with
the wrong sizes; a missing file is an error, never a fallback to random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helmrec.hstu.config import HSTUConfig
from helmrec.hstu.model import HSTU

DEFAULT_WEIGHTS = Path("model_repository/hstu/1/weights.pt")


def save(model: HSTU, path: str | Path) -> Path:
    """Write the model's config and fp32-or-native state atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state": state}, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path, device: str = "cpu") -> HSTU:
    """The network stored at `path`, in eval mode on `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained HSTU weights; run `helmrec train-model` to create them")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "config" not in blob or "state" not in blob:
        raise ValueError(f"{path}: not an HSTU weights file (expected keys 'config' and 'state')")
    model = HSTU(HSTUConfig.from_dict(blob["config"]))
    model.load_state_dict(blob["state"])
    return model.to(device).eval()
