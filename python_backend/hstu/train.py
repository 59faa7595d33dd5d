"""`helmrec train-model`: next-item training of HSTU on MovieLens-100K, on CPU.

Each step takes a batch of users. For a user's training events t_0..t_{L-1}
(at most max_seq_len, the most recent), up to `targets` positions k >= 1 are
drawn; each asks "which item comes after the prefix t_0..t_{k-1}, at time
ts_k?" and is answered by 1 + `negatives` candidate tokens (the true item first,
then items drawn uniformly) placed at cutoff k. One `forward_batch` pass over
[history; all candidates] scores them all: a candidate at cutoff k sees
exactly what `rank` sees after a k-token prefix, because prefix K/V do not
depend on later tokens. Losses: sampled softmax over each group for task
"next_item", and BCE on the true item for task "high_rating" (rating >= 4).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from helmrec.hstu.config import HSTUConfig, preset
from helmrec.hstu.data import MovieLens, UserHistory, load_ml100k
from helmrec.hstu.evaluate import evaluate
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import DEFAULT_WEIGHTS, save


@dataclass(frozen=True)
class TrainConfig:
    """How long and how hard to train.

    The defaults (420 steps of ~0.3 s on one idle core) were picked on the
    validation split: more target positions with few negatives each beat
    fewer positions with many (HR@10 0.63 with 96 x 3 vs 0.59 with 48 x 7
    after 10 epochs), and 14 epochs beat 10 (0.70 vs 0.63).
    """

    epochs: int = 14
    users_per_batch: int = 32
    targets: int = 96
    negatives: int = 3
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "users_per_batch", "targets", "negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")


@dataclass(frozen=True)
class Batch:
    """Right-padded tensors for `HSTU.forward_batch` plus the loss targets."""

    hist_ids: torch.Tensor  # [B, n]
    hist_ts: torch.Tensor  # [B, n]
    hist_actions: torch.Tensor  # [B, n]
    cand_ids: torch.Tensor  # [B, K * (1 + negatives)], groups of 1 + negatives, true item first
    cand_cutoff: torch.Tensor  # [B, K * (1 + negatives)]
    cand_ts: torch.Tensor  # [B, K * (1 + negatives)]
    liked: torch.Tensor  # [B, K] float: rating >= 4 for the true item
    valid: torch.Tensor  # [B, K] bool: padding groups are False


def make_batch(
    users: list[UserHistory], cfg: HSTUConfig, tc: TrainConfig, num_items: int, rng: np.random.Generator
) -> Batch:
    seqs = [u.cut(len(u), cfg.max_seq_len) for u in users]
    bsz, n, k, g = len(seqs), max(len(s) for s in seqs), tc.targets, 1 + tc.negatives
    ids = np.zeros((bsz, n), np.int64)
    ts = np.zeros((bsz, n), np.int64)
    acts = np.zeros((bsz, n), np.int64)
    cand = np.zeros((bsz, k, g), np.int64)
    cutoff = np.zeros((bsz, k, g), np.int64)
    cand_ts = np.zeros((bsz, k, g), np.int64)
    liked = np.zeros((bsz, k), np.float32)
    valid = np.zeros((bsz, k), bool)
    for b, s in enumerate(seqs):
        length = len(s)
        ids[b, :length], ts[b, :length], acts[b, :length] = s.items, s.timestamps, s.actions
        ts[b, length:] = s.timestamps[-1]  # padding keeps timestamps non-decreasing
        picks = rng.choice(np.arange(1, length), size=min(k, length - 1), replace=False)
        m = len(picks)
        cand[b, :m, 0] = s.items[picks]
        cand[b, :m, 1:] = rng.integers(1, num_items, size=(m, g - 1))
        cutoff[b, :m] = picks[:, None]
        cand_ts[b, :m] = s.timestamps[picks][:, None]
        liked[b, :m] = s.actions[picks]
        valid[b, :m] = True
    t = torch.as_tensor
    return Batch(
        t(ids), t(ts), t(acts),
        t(cand.reshape(bsz, -1)), t(cutoff.reshape(bsz, -1)), t(cand_ts.reshape(bsz, -1)),
        t(liked), t(valid),
    )


def batch_loss(model: HSTU, batch: Batch, tc: TrainConfig) -> torch.Tensor:
    logits = model.forward_batch(
        model.item_emb(batch.hist_ids),
        batch.hist_ts,
        batch.hist_actions,
        model.item_emb(batch.cand_ids),
        batch.cand_cutoff,
        batch.cand_ts,
    )
    bsz, k = batch.valid.shape
    groups = logits.view(bsz, k, 1 + tc.negatives, -1)
    next_item = F.cross_entropy(groups[batch.valid][:, :, 0], torch.zeros(int(batch.valid.sum()), dtype=torch.int64))
    high_rating = F.binary_cross_entropy_with_logits(groups[batch.valid][:, 0, 1], batch.liked[batch.valid])
    return next_item + high_rating


def train(cfg: HSTUConfig, data: MovieLens, tc: TrainConfig, progress: bool = True) -> HSTU:
    """Train from scratch; returns the model in eval mode."""
    if cfg.num_items < data.num_items:
        raise ValueError(f"config num_items {cfg.num_items} < the dataset's item id range {data.num_items}")
    if cfg.num_tasks != 2 or cfg.num_actions < 2:
        raise ValueError("MovieLens training needs num_tasks == 2 (next_item, high_rating) and num_actions >= 2")
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = HSTU(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
    train_parts = [data.train(u) for u in data.users]
    steps_per_epoch = -(-len(train_parts) // tc.users_per_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.epochs * steps_per_epoch, pct_start=0.1)
    bar = tqdm(total=tc.epochs * steps_per_epoch, desc="train ml100k", unit="step", disable=not progress)
    for epoch in range(tc.epochs):
        order = rng.permutation(len(train_parts))
        for start in range(0, len(order), tc.users_per_batch):
            batch = make_batch([train_parts[i] for i in order[start : start + tc.users_per_batch]], cfg, tc, data.num_items, rng)
            loss = batch_loss(model, batch, tc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--preset", default="ml100k", help="HSTU preset to train (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="weights file (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--users-per-batch", type=int, default=defaults.users_per_batch)
    parser.add_argument("--targets", type=int, default=defaults.targets, help="next-item targets per user per step")
    parser.add_argument("--negatives", type=int, default=defaults.negatives, help="sampled negatives per target")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--no-eval", action="store_true", help="skip the validation HR@10/NDCG@10 at the end")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    tc = TrainConfig(
        epochs=args.epochs,
        users_per_batch=args.users_per_batch,
        targets=args.targets,
        negatives=args.negatives,
        lr=args.lr,
        seed=args.seed,
    )
    data = load_ml100k()
    began = time.perf_counter()
    model = train(cfg, data, tc)
    path = save(model, args.out)
    print(f"trained {args.preset} for {tc.epochs} epochs in {time.perf_counter() - began:.0f} s -> {path}")
    if not args.no_eval:
        report = evaluate(model, data, split="validation")
        print(f"validation HR@10 {report['model']['hr@10']:.4f} NDCG@10 {report['model']['ndcg@10']:.4f} "  # type: ignore[index]
              f"(most-popular {report['baseline']['hr@10']:.4f} / {report['baseline']['ndcg@10']:.4f})")  # type: ignore[index]
    return 0
