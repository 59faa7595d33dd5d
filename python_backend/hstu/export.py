"""`helmrec export-onnx`: the network's graphs as ONNX, checked with onnxruntime.

Three graphs, one per Triton model that a TensorRT deployment serves; their
tensor names are the Triton tensor names (see `graph_specs`):
  hstu          the bare network, ids in (gathers from the item table inside):
                HISTORY_ITEM_IDS, HISTORY_TIMESTAMPS, HISTORY_ACTIONS [n] i64,
                CANDIDATE_ITEM_IDS [c] i64, QUERY_TIMESTAMP [1] i64 -> SCORES [c, T] f32.
                Same I/O as the Python `hstu` model, so hstu_pool's BLS call is unchanged.
  hstu_prefill  HISTORY_EMB [n, D] f32, HISTORY_TIMESTAMPS, HISTORY_ACTIONS [n] i64 -> KV [L, n, W] f32
  hstu_rank     KV [L, n, W] f32, HISTORY_TIMESTAMPS [n] i64, CANDIDATE_EMB [c, D] f32,
                QUERY_TIMESTAMP [1] i64 -> SCORES [c, T] f32
n and c are dynamic (1..max_seq_len, 1..max_candidates). The cached graphs take
already-gathered embedding rows, like the PyTorch API, because the pool owns the
hot rows. Graphs trace the unchecked bodies (`*_unchecked`): input checks are
data-dependent and stay with the caller (hstu_pool validates every request).
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helmrec import schema
from helmrec.hstu.config import HSTUConfig
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import DEFAULT_WEIGHTS, load

OPSET = 18
DYNAMIC = ("n", "c")  # symbolic dims: history tokens, candidates
_INLINE_LIMIT_BYTES = 1_500_000_000


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton's name, as in helmrec.schema: "FP32" | "INT64"
    dims: tuple[int | str, ...]  # ints, or a name in DYNAMIC


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph = one Triton model of the TensorRT repository."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def graph_specs(cfg: HSTUConfig) -> tuple[GraphSpec, ...]:
    d, layers, w, t = cfg.d_model, cfg.num_layers, cfg.kv_width, cfg.num_tasks
    ts = TensorSpec(schema.HISTORY_TIMESTAMPS, "INT64", ("n",))
    actions = TensorSpec(schema.HISTORY_ACTIONS, "INT64", ("n",))
    query = TensorSpec(schema.QUERY_TIMESTAMP, "INT64", (1,))
    scores = TensorSpec(schema.SCORES, "FP32", ("c", t))
    kv = TensorSpec("KV", "FP32", (layers, "n", w))
    return (
        GraphSpec(
            schema.NETWORK_MODEL,
            (TensorSpec(schema.HISTORY_ITEM_IDS, "INT64", ("n",)), ts, actions,
             TensorSpec(schema.CANDIDATE_ITEM_IDS, "INT64", ("c",)), query),
            (scores,),
        ),
        GraphSpec("hstu_prefill", (TensorSpec("HISTORY_EMB", "FP32", ("n", d)), ts, actions), (kv,)),
        GraphSpec("hstu_rank", (kv, ts, TensorSpec("CANDIDATE_EMB", "FP32", ("c", d)), query), (scores,)),
    )


class ScoreGraph(nn.Module):
    """The bare network: gather rows of the item table, then the uncached forward."""

    def __init__(self, model: HSTU) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        hist_ids: torch.Tensor,
        hist_ts: torch.Tensor,
        hist_actions: torch.Tensor,
        cand_ids: torch.Tensor,
        query_ts: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        return m.forward_unchecked(m.item_emb(hist_ids), hist_ts, hist_actions, m.item_emb(cand_ids), query_ts)


class PrefillGraph(nn.Module):
    """prefill: extend of an empty kv."""

    def __init__(self, model: HSTU) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist_emb: torch.Tensor, hist_ts: torch.Tensor, hist_actions: torch.Tensor) -> torch.Tensor:
        return self.model.extend_suffix_unchecked(self.model.empty_kv(), hist_emb, hist_ts, hist_actions)


class RankGraph(nn.Module):
    """rank, with the query time as a [1] int64 input instead of a Python int."""

    def __init__(self, model: HSTU) -> None:
        super().__init__()
        self.model = model

    def forward(self, kv: torch.Tensor, hist_ts: torch.Tensor, cand_emb: torch.Tensor, query_ts: torch.Tensor) -> torch.Tensor:
        return self.model.rank_unchecked(kv, hist_ts, cand_emb, query_ts)


GRAPH_MODULES: dict[str, type[nn.Module]] = {
    schema.NETWORK_MODEL: ScoreGraph,
    "hstu_prefill": PrefillGraph,
    "hstu_rank": RankGraph,
}


def example_inputs(model: HSTU, n: int, c: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid inputs of every graph, by tensor name, for an n-token history and c candidates."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    dev = model.item_emb.weight.device
    hist_ids = torch.randint(0, cfg.num_items, (n,), generator=gen).to(dev)
    cand_ids = torch.randint(0, cfg.num_items, (c,), generator=gen).to(dev)
    ts = (1_700_000_000 + torch.cumsum(torch.randint(0, 100_000, (n,), generator=gen), 0)).to(dev)
    actions = torch.randint(0, cfg.num_actions, (n,), generator=gen).to(dev)
    with torch.no_grad():  # not inference_mode: torch.export cannot trace inference tensors
        hist_emb = model.item_emb(hist_ids).float()
        cand_emb = model.item_emb(cand_ids).float()
        kv = model.prefill(hist_emb, ts, actions)
    return {
        schema.HISTORY_ITEM_IDS: hist_ids,
        schema.CANDIDATE_ITEM_IDS: cand_ids,
        schema.HISTORY_TIMESTAMPS: ts,
        schema.HISTORY_ACTIONS: actions,
        schema.QUERY_TIMESTAMP: ts[-1:] + 3_600,
        "HISTORY_EMB": hist_emb,
        "CANDIDATE_EMB": cand_emb,
        "KV": kv,
    }


def export_onnx(model: HSTU, out_dir: Path) -> dict[str, Path]:
    """Write `<graph>.onnx` for every graph of `graph_specs` (fp32, dynamic n and c)."""
    cfg = model.config
    model = model.float().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    dims = {
        "n": torch.export.Dim("n", min=1, max=cfg.max_seq_len),
        "c": torch.export.Dim("c", min=1, max=cfg.max_candidates),
    }
    # Example sizes >= 2: torch.export specialises dims seen as 0 or 1.
    ex = example_inputs(model, n=min(8, cfg.max_seq_len), c=min(4, cfg.max_candidates))
    # Protobuf caps a file at 2 GiB; the `large` item table alone is 2 GB in fp32.
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > _INLINE_LIMIT_BYTES
    paths = {}
    for spec in graph_specs(cfg):
        path = out_dir / f"{spec.name}.onnx"
        dynamic = tuple({i: dims[d] for i, d in enumerate(t.dims) if isinstance(d, str)} or None for t in spec.inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours
            torch.onnx.export(
                GRAPH_MODULES[spec.name](model).eval(),
                tuple(ex[t.name] for t in spec.inputs),
                path,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=external,
                verbose=False,
            )
        paths[spec.name] = path
    return paths


def check_onnx(model: HSTU, paths: dict[str, Path], shapes: list[tuple[int, int]]) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per graph over the given (n, c) shapes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for name, p in paths.items()}
    specs = {s.name: s for s in graph_specs(model.config)}
    worst = dict.fromkeys(paths, 0.0)
    for i, (n, c) in enumerate(shapes):
        ex = example_inputs(model, n, c, seed=i + 1)
        with torch.inference_mode():
            query = int(ex[schema.QUERY_TIMESTAMP][0])
            expected = {
                schema.NETWORK_MODEL: model.score(ex[schema.HISTORY_ITEM_IDS], ex[schema.HISTORY_TIMESTAMPS],
                                                  ex[schema.HISTORY_ACTIONS], ex[schema.CANDIDATE_ITEM_IDS], query),
                "hstu_prefill": ex["KV"],
                "hstu_rank": model.rank(ex["KV"], ex[schema.HISTORY_TIMESTAMPS], ex["CANDIDATE_EMB"], query),
            }
        for name, session in sessions.items():
            feeds = {t.name: ex[t.name].cpu().numpy() for t in specs[name].inputs}
            (got,) = session.run(None, feeds)
            worst[name] = max(worst[name], float(np.abs(got - expected[name].cpu().numpy()).max()))
    return worst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights file (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the .onnx files")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |onnxruntime - PyTorch| accepted")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    model = load(args.weights)
    paths = export_onnx(model, args.out)
    cfg = model.config
    shapes = [(1, 1), (min(37, cfg.max_seq_len), min(11, cfg.max_candidates)), (cfg.max_seq_len, cfg.max_candidates)]
    worst = check_onnx(model, paths, shapes)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(f"onnxruntime vs PyTorch, max |difference| over (n, c) in {shapes}:")
    for name, diff in worst.items():
        print(f"  {name:14s} {diff:.2e}")
    if max(worst.values()) > args.atol:
        print(f"FAILED: a difference is above --atol {args.atol}")
        return 1
    return 0
