"""`helmrec eval-model`: HR@10 / NDCG@10 of the served weights vs most-popular.

Protocol (the SASRec/HSTU-paper sampled protocol): for every user the held-out
item (the last event for "test", the second last for "validation") is ranked
among `num_negatives` (default 100) items the user never interacted with,
drawn uniformly with a fixed seed. The model scores through the cached serving
path (`prefill` then `rank`, task "next_item") on at most `max_seq_len` most
recent events before the target, with the target's timestamp as query time.
The baseline scores an item by its interaction count in the training parts.
Ties are broken uniformly at random (seeded), for both scorers alike.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helmrec.hstu.data import MovieLens, UserHistory, load_ml100k
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import DEFAULT_WEIGHTS, load

TOP_K = 10
SPLITS = ("test", "validation")


@dataclass(frozen=True)
class RankingMetrics:
    hr_at_10: float
    ndcg_at_10: float

    def to_dict(self) -> dict[str, float]:
        return {"hr@10": self.hr_at_10, "ndcg@10": self.ndcg_at_10}


@dataclass(frozen=True)
class EvalCase:
    """One user's query: the history before the target, and the target first among the candidates."""

    history: UserHistory
    candidates: np.ndarray  # [1 + num_negatives]; index 0 is the held-out item
    query_ts: int


def eval_cases(data: MovieLens, split: str, max_seq_len: int, num_negatives: int, seed: int) -> list[EvalCase]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(seed)
    cases = []
    for user in data.users:
        target = len(user) - 1 if split == "test" else len(user) - 2
        unseen = np.setdiff1d(np.arange(1, data.num_items), user.items, assume_unique=False)
        if len(unseen) < num_negatives:
            raise ValueError(f"user {user.user_id}: only {len(unseen)} unseen items for {num_negatives} negatives")
        negatives = rng.choice(unseen, size=num_negatives, replace=False)
        cases.append(
            EvalCase(
                history=user.cut(target, max_seq_len),
                candidates=np.concatenate([user.items[target : target + 1], negatives]),
                query_ts=int(user.timestamps[target]),
            )
        )
    return cases


def metrics_from_scores(scores: list[np.ndarray], seed: int) -> RankingMetrics:
    """scores[u][0] is the held-out item's score; rank = items strictly above + random share of ties."""
    rng = np.random.default_rng(seed)
    hits, gains = 0.0, 0.0
    for s in scores:
        above = int(np.sum(s[1:] > s[0]))
        ties = int(np.sum(s[1:] == s[0]))
        rank = above + int(rng.integers(0, ties + 1))
        if rank < TOP_K:
            hits += 1.0
            gains += 1.0 / math.log2(rank + 2)
    return RankingMetrics(hits / len(scores), gains / len(scores))


def model_scores(model: HSTU, cases: list[EvalCase], task: int = 0) -> list[np.ndarray]:
    """Scores through the serving path: prefill the history, then rank the candidates."""
    dev = model.item_emb.weight.device
    out = []
    with torch.inference_mode():
        for case in cases:
            h = case.history
            ts = torch.as_tensor(h.timestamps, device=dev)
            kv = model.prefill(
                model.embed_items(torch.as_tensor(h.items, device=dev)), ts, torch.as_tensor(h.actions, device=dev)
            )
            cand = model.embed_items(torch.as_tensor(case.candidates, device=dev))
            out.append(model.rank(kv, ts, cand, case.query_ts)[:, task].cpu().numpy())
    return out


def evaluate(
    model: HSTU, data: MovieLens, split: str = "test", num_negatives: int = 100, seed: int = 0
) -> dict[str, object]:
    """The report of docs/reports.md: {"dataset", "model": {...}, "baseline": {...}} plus protocol fields."""
    model.eval()
    cases = eval_cases(data, split, model.config.max_seq_len, num_negatives, seed)
    popularity = data.item_counts().astype(np.float64)
    return {
        "dataset": "ml-100k",
        "split": split,
        "num_negatives": num_negatives,
        "users": len(cases),
        "model": metrics_from_scores(model_scores(model, cases), seed).to_dict(),
        "baseline": metrics_from_scores([popularity[c.candidates] for c in cases], seed).to_dict(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights file (default: %(default)s)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--negatives", type=int, default=100, help="sampled negatives per user (default 100)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model = load(args.weights)
    report = evaluate(model, load_ml100k(), args.split, args.negatives, args.seed)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    m, b = report["model"], report["baseline"]
    print(f"ml-100k {args.split}, 1 held-out item vs {args.negatives} sampled negatives, {report['users']} users")
    print(f"{'':10s} {'HR@10':>8s} {'NDCG@10':>8s}")
    print(f"{'HSTU':10s} {m['hr@10']:8.4f} {m['ndcg@10']:8.4f}")  # type: ignore[index]
    print(f"{'most-pop':10s} {b['hr@10']:8.4f} {b['ndcg@10']:8.4f}")  # type: ignore[index]
    print(f"HSTU / most-popular NDCG@10: {m['ndcg@10'] / max(b['ndcg@10'], 1e-12):.2f}x")  # type: ignore[index]
    return 0
