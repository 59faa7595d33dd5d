"""`helmrec export-onnx`: the prefill and rank graphs as ONNX, checked with onnxruntime.

Two graphs, because the server runs them at different times on different
inputs (a KV miss runs prefill; every request runs rank):
  prefill.onnx: hist_emb [n, D] f32, hist_ts [n] i64, hist_actions [n] i64 -> kv [L, n, W] f32
  rank.onnx:    kv [L, n, W] f32, hist_ts [n] i64, cand_emb [c, D] f32, query_ts [1] i64 -> scores [c, T] f32
n and c are dynamic (1..max_seq_len, 1..max_candidates). Embedding rows come
in already gathered, exactly like the PyTorch API, because the pool owns the
item table's hot rows. The graphs use the unchecked bodies of `extend_suffix`
and `rank` (input checks are data-dependent and belong to the caller).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from python_backend.hstu.model import HSTU
from python_backend.hstu.weights import DEFAULT_WEIGHTS, load

OPSET = 18
PREFILL_INPUTS = ("hist_emb", "hist_ts", "hist_actions")
RANK_INPUTS = ("kv", "hist_ts", "cand_emb", "query_ts")


class PrefillGraph(nn.Module):
    """prefill as a graph: extend of an empty kv."""

    def __init__(self, model: HSTU) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist_emb: torch.Tensor, hist_ts: torch.Tensor, hist_actions: torch.Tensor) -> torch.Tensor:
        return self.model.extend_suffix_unchecked(self.model.empty_kv(), hist_emb, hist_ts, hist_actions)


class RankGraph(nn.Module):
    """rank as a graph: the query time is a [1] int64 input, not a Python int."""

    def __init__(self, model: HSTU) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query_ts: torch.Tensor
    ) -> torch.Tensor:
        return self.model.rank_unchecked(kv, hist_ts, cand_emb, query_ts)


@dataclass(frozen=True)
class ExportedGraphs:
    prefill: Path
    rank: Path


def example_request(model: HSTU, n: int, c: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but valid inputs of both graphs for an n-token history and c candidates."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    dev = model.item_emb.weight.device
    ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 100_000, (n,), generator=gen), 0)
    with torch.no_grad():  # not inference_mode: torch.export cannot trace inference tensors
        hist_emb = model.item_emb.weight[torch.randint(0, cfg.num_items, (n,), generator=gen).to(dev)].float().clone()
        cand_emb = model.item_emb.weight[torch.randint(0, cfg.num_items, (c,), generator=gen).to(dev)].float().clone()
    return {
        "hist_emb": hist_emb,
        "hist_ts": ts.to(dev),
        "hist_actions": torch.randint(0, cfg.num_actions, (n,), generator=gen).to(dev),
        "cand_emb": cand_emb,
        "query_ts": (ts[-1:] + 3_600).to(dev),
    }


def export_onnx(model: HSTU, out_dir: Path) -> ExportedGraphs:
    """Write prefill.onnx and rank.onnx (fp32, dynamic n and c) into out_dir."""
    cfg = model.config
    model = model.float().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    ex = example_request(model, n=min(8, cfg.max_seq_len), c=min(4, cfg.max_candidates))
    with torch.no_grad():
        kv = model.prefill(ex["hist_emb"], ex["hist_ts"], ex["hist_actions"])
    n_dim = torch.export.Dim("n", min=1, max=cfg.max_seq_len)
    c_dim = torch.export.Dim("c", min=1, max=cfg.max_candidates)
    paths = ExportedGraphs(out_dir / "prefill.onnx", out_dir / "rank.onnx")
    torch.onnx.export(
        PrefillGraph(model),
        tuple(ex[k] for k in PREFILL_INPUTS),
        paths.prefill,
        input_names=list(PREFILL_INPUTS),
        output_names=["kv"],
        dynamic_shapes={"hist_emb": {0: n_dim}, "hist_ts": {0: n_dim}, "hist_actions": {0: n_dim}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )
    torch.onnx.export(
        RankGraph(model),
        (kv, ex["hist_ts"], ex["cand_emb"], ex["query_ts"]),
        paths.rank,
        input_names=list(RANK_INPUTS),
        output_names=["scores"],
        dynamic_shapes={"kv": {1: n_dim}, "hist_ts": {0: n_dim}, "cand_emb": {0: c_dim}, "query_ts": None},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )
    return paths


def check_onnx(model: HSTU, graphs: ExportedGraphs, shapes: list[tuple[int, int]]) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| over the given (n, c) shapes, for kv and scores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    prefill = ort.InferenceSession(str(graphs.prefill), opts, providers=["CPUExecutionProvider"])
    rank = ort.InferenceSession(str(graphs.rank), opts, providers=["CPUExecutionProvider"])
    worst = {"kv": 0.0, "scores": 0.0}
    for i, (n, c) in enumerate(shapes):
        ex = example_request(model, n, c, seed=i + 1)
        with torch.inference_mode():
            kv = model.prefill(ex["hist_emb"], ex["hist_ts"], ex["hist_actions"])
            scores = model.rank(kv, ex["hist_ts"], ex["cand_emb"], int(ex["query_ts"][0]))
        np_in = {k: v.cpu().numpy() for k, v in ex.items()}
        (kv_ort,) = prefill.run(None, {k: np_in[k] for k in PREFILL_INPUTS})
        (scores_ort,) = rank.run(
            None, {"kv": kv_ort, "hist_ts": np_in["hist_ts"], "cand_emb": np_in["cand_emb"], "query_ts": np_in["query_ts"]}
        )
        worst["kv"] = max(worst["kv"], float(np.abs(kv_ort - kv.cpu().numpy()).max()))
        worst["scores"] = max(worst["scores"], float(np.abs(scores_ort - scores.cpu().numpy()).max()))
    return worst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights file (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="directory for prefill.onnx and rank.onnx")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |onnxruntime - PyTorch| accepted")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    model = load(args.weights)
    graphs = export_onnx(model, args.out)
    cfg = model.config
    shapes = [(1, 1), (min(37, cfg.max_seq_len), min(11, cfg.max_candidates)), (cfg.max_seq_len, cfg.max_candidates)]
    worst = check_onnx(model, graphs, shapes)
    print(f"wrote {graphs.prefill} and {graphs.rank}")
    print(f"onnxruntime vs PyTorch over (n, c) in {shapes}: max |d kv| {worst['kv']:.2e}, max |d scores| {worst['scores']:.2e}")
    if max(worst.values()) > args.atol:
        print(f"FAILED: difference above --atol {args.atol}")
        return 1
    return 0
