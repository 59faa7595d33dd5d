"""MovieLens-100K loading, leave-last-out split, a short training run and the eval report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helmrec.cli import main
from helmrec.hstu.config import preset
from helmrec.hstu.data import MovieLens, load_ml100k
from helmrec.hstu.evaluate import eval_cases, evaluate, metrics_from_scores
from helmrec.hstu.model import HSTU
from helmrec.hstu.train import TrainConfig, make_batch, train
from helmrec.hstu.weights import save

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ml100k() -> MovieLens:
    return load_ml100k()


def test_ml100k_is_complete_and_time_ordered(ml100k: MovieLens) -> None:
    assert len(ml100k.users) == 943 and ml100k.num_items == 1683
    assert sum(len(u) for u in ml100k.users) == 100_000
    assert all(bool(np.all(np.diff(u.timestamps) >= 0)) for u in ml100k.users)
    assert preset("ml100k").num_items >= ml100k.num_items


def test_leave_last_out_split(ml100k: MovieLens) -> None:
    user = ml100k.users[0]
    assert np.array_equal(ml100k.train(user).items, user.items[:-2])
    test = eval_cases(ml100k, "test", 200, 100, seed=0)[0]
    valid = eval_cases(ml100k, "validation", 200, 100, seed=0)[0]
    assert test.candidates[0] == user.items[-1] and valid.candidates[0] == user.items[-2]
    assert np.array_equal(test.history.items, user.items[:-1][-200:])
    assert test.query_ts == user.timestamps[-1]
    assert not set(test.candidates[1:]) & set(user.items.tolist())  # negatives are unseen items


def test_metrics_rank_the_held_out_item() -> None:
    perfect = metrics_from_scores([np.array([9.0, 1.0, 2.0])], seed=0)
    assert (perfect.hr_at_10, perfect.ndcg_at_10) == (1.0, 1.0)
    last = metrics_from_scores([np.array([0.0] + [1.0] * 10)], seed=0)
    assert last.hr_at_10 == 0.0
    third = metrics_from_scores([np.array([5.0, 6.0, 7.0, 1.0])], seed=0)
    assert third.ndcg_at_10 == pytest.approx(0.5)


def test_training_batch_ranks_each_target_after_its_own_prefix(ml100k: MovieLens) -> None:
    """A candidate's training score is exactly what rank() serves after that prefix."""
    cfg = dataclasses.replace(preset("ml100k"), d_model=16, d_qk=8, d_v=8, dropout=0.0)
    tc = TrainConfig(targets=3, negatives=2)
    users = [ml100k.train(u) for u in ml100k.users[:2]]
    batch = make_batch(users, cfg, tc, ml100k.num_items, np.random.default_rng(0))
    torch.manual_seed(0)
    model = HSTU(cfg).eval()
    with torch.inference_mode():
        logits = model.forward_batch(
            model.item_emb(batch.hist_ids), batch.hist_ts, batch.hist_actions,
            model.item_emb(batch.cand_ids), batch.cand_cutoff, batch.cand_ts,
        )
        for b in range(2):
            for k in range(batch.cand_ids.shape[1]):
                cut = int(batch.cand_cutoff[b, k])
                ts = batch.hist_ts[b, :cut]
                kv = model.prefill(model.item_emb(batch.hist_ids[b, :cut]), ts, batch.hist_actions[b, :cut])
                served = model.rank(kv, ts, model.item_emb(batch.cand_ids[b, k : k + 1]), int(batch.cand_ts[b, k]))
                torch.testing.assert_close(logits[b, k : k + 1], served, atol=1e-5, rtol=0)


def test_short_training_run_learns_and_reports(ml100k: MovieLens, tmp_path: Path) -> None:
    small = MovieLens(ml100k.users[:96], ml100k.num_items)
    cfg = dataclasses.replace(preset("ml100k"), d_model=32, d_qk=16, d_v=16, max_seq_len=50)
    tc = TrainConfig(epochs=2, users_per_batch=32, targets=8, negatives=7)
    torch.manual_seed(0)
    untrained = evaluate(HSTU(cfg).eval(), small, split="validation")
    model = train(cfg, small, tc, progress=False)
    trained = evaluate(model, small, split="validation")
    assert trained["model"]["hr@10"] > untrained["model"]["hr@10"]  # type: ignore[index]

    weights = save(model, tmp_path / "weights.pt")
    report_path = tmp_path / "eval.json"
    assert main(["eval-model", "--weights", str(weights), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["dataset"] == "ml-100k"
    for side in ("model", "baseline"):
        assert set(report[side]) == {"hr@10", "ndcg@10"}
        assert 0.0 <= report[side]["ndcg@10"] <= report[side]["hr@10"] <= 1.0
