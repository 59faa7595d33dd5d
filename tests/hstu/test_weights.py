"""Weights files carry their config; a missing file is an error, never random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import load, save


def test_save_then_load_gives_the_same_scores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HSTU(preset("tiny")).eval()
    path = save(model, tmp_path / "w" / "weights.pt")
    loaded = load(path)
    assert loaded.config == model.config and not loaded.training
    ids, ts = torch.arange(5), torch.arange(5, dtype=torch.int64) * 100
    acts, cands = torch.zeros(5, dtype=torch.int64), torch.arange(10, 14)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.score(ids, ts, acts, cands, 600), model.score(ids, ts, acts, cands, 600))


def test_missing_weights_say_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="helmrec train-model"):
        load(tmp_path / "absent.pt")
