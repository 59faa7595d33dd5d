"""HSTU on the GPU: KV-hit vs full-prefill latency, kernel TFLOP/s vs the device's ceilings, throughput.

    python -m helmrec.load.bench.gpu --device cuda [--preset large] [--histories 1024 2048 4096] [--candidates 256]
                        [--json PATH]
    python -m helmrec.load.bench.gpu --triton [--history 1024] [--candidates 256] [--requests 200] [--json PATH]

In-process mode (default) measures, in one run on the `large` preset in bf16:
  correctness  the Triton kernels and the fused network vs fp32 references on fresh random inputs;
  (a) rank latency at a KV hit vs a full prefill + rank, per history length, through
      HSTU.prefill/rank (eager PyTorch), FusedHSTU (Triton attention) and GraphedRank (CUDA graph);
  (c) the attention kernels' TFLOP/s and GB/s against a bf16 torch.matmul and a device copy measured
      in the same run, and their speed-up over the same attention as eager einsums;
  (d) KV-hit throughput at concurrency 1/8/32: one thread and one CUDA stream per concurrent request.
`--triton` measures (b): the same KV-hit request through a tritonserver on the GPU (gRPC, the
ensemble, hstu_pool) vs the same PooledRanker in this process.
Each table's last line is its headline ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from helmrec import schema
from helmrec.fastpath.fused_model import FusedHSTU
from helmrec.fastpath.graphed_extend import GraphedExtend
from helmrec.fastpath.graphed_prefill import GraphedPrefill
from helmrec.fastpath.graphed_rank import GraphedRank, RankInput
from helmrec.fastpath.paged_rank import PagedInput, PagedRank
from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.kernels.attention import candidate_attention, causal_attention
from helmrec.kernels.reference import candidate_attention_reference, causal_attention_reference

console = Console()


# ---------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Per-call wall time (ms) of fn + device sync: what a request waits, launch overhead included."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def device_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Mean device time (ms) of one call: `iters` calls captured in one CUDA graph, replayed.

    Timing back-to-back eager calls would measure the host instead: a kernel of
    ~0.1 ms is launched through ~0.1 ms of Python (checks, allocation, launch).
    """
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return statistics.median(wall_ms(fn, device, iters, 0))
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()  # first replay uploads the graph
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest error relative to the reference's largest magnitude."""
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-30))


# ---------------------------------------------------------------------------------- requests
def make_history(model: HSTU, n: int, c: int, gen: torch.Generator, device: torch.device):
    cfg = model.config
    ids = torch.randint(0, cfg.num_items, (n,), generator=gen).to(device)
    ts = (1_700_000_000 + torch.cumsum(torch.randint(0, 86_400, (n,), generator=gen), 0)).to(device)
    actions = torch.randint(0, cfg.num_actions, (n,), generator=gen).to(device)
    cands = torch.randint(0, cfg.num_items, (c,), generator=gen).to(device)
    query = torch.tensor(int(ts[-1]) + 600 if n else 1_700_000_000, device=device)
    return ids, ts, actions, cands, query


# ---------------------------------------------------------------------------------- correctness
def check_correctness(model32: HSTU, model: HSTU, device: torch.device, n: int, c: int, gen: torch.Generator) -> dict:
    """Kernels vs the fp32 reference on their own (rounded) inputs; fused/eager network vs the fp32 network."""
    cfg = model.config
    h, dqk, dv = cfg.num_heads, cfg.d_qk, cfg.d_v
    dtype = model.item_emb.weight.dtype
    scale, norm = dqk**-0.5, 1.0 / cfg.max_seq_len
    r = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    out = {}
    q, kc, vc, kn, vn = r(n // 2, h, dqk), r(n // 2, h, dqk), r(n // 2, h, dv), r(n // 2, h, dqk), r(n // 2, h, dv)
    out["causal_extend_rel_err"] = rel_err(
        causal_attention(q, kc, vc, kn, vn, scale, norm), causal_attention_reference(q, kc, vc, kn, vn, scale, norm)
    )
    q, ks, vs, kh, vh = r(c, h, dqk), r(c, h, dqk), r(c, h, dv), r(n, h, dqk), r(n, h, dv)
    out["candidate_rel_err"] = rel_err(
        candidate_attention(q, kh, vh, ks, vs, scale, norm), candidate_attention_reference(q, kh, vh, ks, vs, scale, norm)
    )
    ids, ts, actions, cands, query = make_history(model, n, c, gen, device)
    with torch.inference_mode():
        want = model32.forward(model32.embed_items(ids), ts, actions, model32.embed_items(cands), int(query))
        fused = FusedHSTU(model)
        kv = fused.prefill(model.embed_items(ids), ts, actions)
        out["fused_scores_rel_err"] = rel_err(fused.rank(kv, ts, model.embed_items(cands), query), want)
        if device.type == "cuda":
            graphed = GraphedRank(fused).rank(kv, ts.cpu(), model.embed_items(cands), int(query))
            out["graphed_scores_rel_err"] = rel_err(graphed, want)
        kv = model.prefill(model.embed_items(ids), ts, actions)
        out["eager_scores_rel_err"] = rel_err(model.rank(kv, ts, model.embed_items(cands), int(query)), want)
    out["history"], out["candidates"], out["dtype"] = n, c, str(dtype)
    return out


# ---------------------------------------------------------------------------------- (a) latency
def rank_latency(model: HSTU, device: torch.device, histories: list[int], c: int, iters: int, gen: torch.Generator) -> list[dict]:
    """Per request and path: wall time (what the caller waits, Python launches included) and
    device time (the same kernels replayed from a CUDA graph: what the GPU itself spends).
    Item rows come from a plain gather (the pool serves them in production)."""
    fused = FusedHSTU(model)
    graphed = GraphedRank(fused) if device.type == "cuda" else None
    graphed_prefill = GraphedPrefill(fused) if device.type == "cuda" else None
    graphed_extend = GraphedExtend(fused) if device.type == "cuda" else None
    rows = []
    for n in histories:
        ids, ts, actions, cands, query = make_history(model, n, c, gen, device)
        q_int, ts_host = int(query), ts.cpu()
        with torch.inference_mode():
            kv = model.prefill(model.item_emb(ids), ts, actions)
            tail = n - 16
            # (wall: public checked API, device: its unchecked body, which has no host syncs to capture)
            paths: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
                "eager KV hit": (
                    lambda: model.rank(kv, ts, model.item_emb(cands), q_int),
                    lambda: model.rank_unchecked(kv, ts, model.item_emb(cands), query),
                ),
                "eager full prefill": (
                    lambda: model.rank(model.prefill(model.item_emb(ids), ts, actions), ts, model.item_emb(cands), q_int),
                    lambda: model.rank_unchecked(
                        model.extend_suffix_unchecked(model.empty_kv(), model.item_emb(ids), ts, actions),
                        ts,
                        model.item_emb(cands),
                        query,
                    ),
                ),
                "fused KV hit": (lambda: fused.rank(kv, ts, model.item_emb(cands), query),) * 2,
                "fused extend 16 + rank": (
                    lambda: fused.rank(
                        torch.cat(
                            [kv[:, :tail], fused.extend_suffix(kv[:, :tail], model.item_emb(ids[tail:]), ts, actions[tail:])], 1
                        ),
                        ts,
                        model.item_emb(cands),
                        query,
                    ),
                )
                * 2,
                "fused full prefill": (
                    lambda: fused.rank(fused.prefill(model.item_emb(ids), ts, actions), ts, model.item_emb(cands), query),
                )
                * 2,
            }
            if graphed is not None:  # its device work is the fused KV hit's plus the copy into the bucket
                paths["graphed KV hit"] = (lambda: graphed.rank(kv, ts_host, model.item_emb(cands), q_int), None)
                paths["graphed extend 16 + rank"] = (
                    lambda: graphed.rank(
                        torch.cat(
                            [
                                kv[:, :tail],
                                graphed_extend.extend_suffix(kv[:, :tail], model.item_emb(ids[tail:]), ts, actions[tail:]),
                            ],
                            1,
                        ),
                        ts_host,
                        model.item_emb(cands),
                        q_int,
                    ),
                    None,
                )
                paths["graphed full prefill"] = (
                    lambda: graphed.rank(
                        graphed_prefill.prefill(model.item_emb(ids), ts, actions), ts_host, model.item_emb(cands), q_int
                    ),
                    None,
                )
            for name, (wall_fn, device_fn) in paths.items():
                lat = wall_ms(wall_fn, device, iters, warmup=3)
                dev = _device_ms_or_none(device_fn, device, name) if device_fn is not None and device.type == "cuda" else None
                rows.append(
                    {
                        "history": n,
                        "candidates": c,
                        "path": name,
                        "p50_ms": pct(lat, 50),
                        "p90_ms": pct(lat, 90),
                        "device_ms": dev,
                    }
                )
    return rows


def _device_ms_or_none(fn: Callable[[], object], device: torch.device, name: str) -> float | None:
    """device_ms, or None (said on the console) where the path cannot be captured in a CUDA graph."""
    try:
        return device_ms(fn, device, iters=10, warmup=2)
    except RuntimeError as exc:
        console.print(f"[yellow]{name}: no device time, capture failed: {str(exc).splitlines()[0]}[/yellow]")
        torch.cuda.synchronize(device)
        return None


# ---------------------------------------------------------------------------------- (c) kernels
def ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    """Measured peak: dense bf16 matmul TFLOP/s, device-to-device copy GB/s (read + write)."""
    size = 8192 if device.type == "cuda" else 512  # the CPU run is a smoke test of this script
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    ms = device_ms(lambda: torch.matmul(a, b), device, iters=20, warmup=3)
    src = torch.empty(1 << (29 if device.type == "cuda" else 24), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = device_ms(lambda: dst.copy_(src), device, iters=20, warmup=3)
    return {"matmul_tflops": 2 * size**3 / ms / 1e9, "copy_gbs": 2 * src.numel() / copy_ms / 1e6}


def _eager_causal(q, kc, vc, kn, vn, scale, norm):
    """The layer's attention as written in python_backend/hstu/layer.py (cat, einsum, mask, einsum)."""
    n0, m = kc.shape[0], q.shape[0]
    keys, values = torch.cat([kc, kn]), torch.cat([vc, vn])
    keep = torch.arange(n0 + m, device=q.device).unsqueeze(0) <= torch.arange(n0, n0 + m, device=q.device).unsqueeze(1)
    w = torch.nn.functional.silu(torch.einsum("mhd,nhd->hmn", q, keys) * scale) * norm * keep.to(q.dtype)
    return torch.einsum("hmn,nhd->mhd", w, values)


def _eager_candidate(q, kh, vh, ks, vs, scale, norm):
    w = torch.nn.functional.silu(torch.einsum("chd,nhd->hcn", q, kh) * scale) * norm
    ws = torch.nn.functional.silu((q * ks).sum(-1) * scale) * norm
    return torch.einsum("hcn,nhd->chd", w, vh) + ws.unsqueeze(-1) * vs


def kernel_throughput(
    cfg, device: torch.device, dtype: torch.dtype, shapes: list[tuple[str, int, int]], gen: torch.Generator
) -> list[dict]:
    """shapes: (op, keys n, queries m); causal = full prefill of n tokens (m = n), candidate = m candidates over n."""
    h, dqk, dv = cfg.num_heads, cfg.d_qk, cfg.d_v
    scale, norm = dqk**-0.5, 1.0 / cfg.max_seq_len
    r = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    es = torch.empty((), dtype=dtype).element_size()
    rows = []
    for op, n, m in shapes:
        q = r(m, h, dqk)
        if op == "causal":
            kc, vc, kn, vn = r(0, h, dqk), r(0, h, dv), r(m, h, dqk), r(m, h, dv)
            args = (q, kc, vc, kn, vn, scale, norm)
            fused, eager = causal_attention, _eager_causal
            flops = 2 * h * (m * (m + 1) // 2) * (dqk + dv)
            io = (m * h * (2 * dqk + 2 * dv)) * es
        else:
            kh, vh, ks, vs = r(n, h, dqk), r(n, h, dv), r(m, h, dqk), r(m, h, dv)
            args = (q, kh, vh, ks, vs, scale, norm)
            fused, eager = candidate_attention, _eager_candidate
            flops = 2 * h * m * n * (dqk + dv) + 4 * h * m * dqk
            io = (n * h * (dqk + dv) + m * h * (2 * dqk + 2 * dv)) * es
        with torch.inference_mode():
            ms = device_ms(lambda: fused(*args), device, iters=20, warmup=3)
            eager_ms = device_ms(lambda: eager(*args), device, iters=5, warmup=1)
        rows.append(
            {
                "op": op,
                "keys": n,
                "queries": m,
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "gbs": io / ms / 1e6,
                "eager_ms": eager_ms,
                "speedup_vs_eager": eager_ms / ms,
            }
        )
    return rows


# Candidate launch shapes for `--sweep-tiles` (block_m, block_n, num_warps, num_stages).
SWEEP_TILES = [
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (128, 128, 8, 3),
    (128, 64, 8, 4),
    (128, 32, 4, 4),
    (64, 64, 4, 3),
    (64, 64, 4, 4),
    (64, 128, 4, 3),
    (64, 128, 8, 3),
    (64, 32, 4, 3),
    (32, 64, 4, 3),
    (16, 64, 4, 3),
]
SWEEP_SPLITS = [1, 4, 16, 64]


def sweep_tiles(cfg, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> list[dict]:
    """Device time of each kernel under forced tiles and key splits, to check `default_tiles` and `_split`."""
    from helmrec.kernels.triton_attention import Tiles, candidate_attention_triton, causal_attention_triton

    h, dqk, dv = cfg.num_heads, cfg.d_qk, cfg.d_v
    scale, norm = dqk**-0.5, 1.0 / cfg.max_seq_len
    r = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    cases = [
        ("causal prefill", causal_attention_triton, 0, 4096),
        ("causal prefill", causal_attention_triton, 0, 16384),
        ("causal extend", causal_attention_triton, 4080, 16),
        ("candidate", candidate_attention_triton, 4096, 256),
        ("candidate", candidate_attention_triton, 16384, 2048),
    ]
    cases = [cs for cs in cases if cs[2] + cs[3] <= cfg.max_seq_len]
    rows = []
    for name, fn, n, m in cases:
        args = (r(m, h, dqk), r(n, h, dqk), r(n, h, dv), r(m, h, dqk), r(m, h, dv), scale, norm)
        variants = [("default", None, None)] + [(str(t), None, Tiles(*t)) for t in SWEEP_TILES if t[0] <= max(16, 2 * m)]
        variants += [(f"default, splits={sp}", sp, None) for sp in SWEEP_SPLITS]
        with torch.inference_mode():
            for label, splits, tiles in variants:
                ms = device_ms(lambda: fn(*args, splits=splits, tiles=tiles), device, iters=10, warmup=2)
                rows.append({"case": name, "keys": n, "queries": m, "tiles": label, "ms": ms})
    return rows


# ---------------------------------------------------------------------------------- (d) throughput
def throughput(
    model: HSTU, device: torch.device, n: int, c: int, concurrency: list[int], seconds: float, gen: torch.Generator
) -> list[dict]:
    """KV-hit rank throughput with `k` requests in flight, two ways:
    threads: k threads, each on its own CUDA stream with its own user (and its own graphs);
    batched: one caller ranks the k users' requests together in one graph replay per round."""
    fused = FusedHSTU(model)
    users = []
    with torch.inference_mode():
        for _ in range(max(concurrency)):
            ids, ts, actions, cands, query = make_history(model, n, c, gen, device)
            users.append((fused.prefill(model.item_emb(ids), ts, actions), ts, cands, query, int(query) - int(ts[-1])))
    cuda = device.type == "cuda"
    graphs = [GraphedRank(fused) for _ in range(max(concurrency))] if cuda else []
    paths = {
        "eager": lambda i, kv, ts, cands, query, gap: model.rank(kv, ts, model.item_emb(cands), int(query)),
        "fused": lambda i, kv, ts, cands, query, gap: fused.rank(kv, ts, model.item_emb(cands), query),
    }
    if cuda:
        paths["graphed"] = lambda i, kv, ts, cands, query, gap: graphs[i].rank_many([RankInput(kv, model.item_emb(cands), gap)])
        with torch.inference_mode():
            for i, user in enumerate(users):  # capture before threads start
                paths["graphed"](i, *user)
    rows = []
    for name, step in paths.items():
        for k in concurrency:
            lat: list[list[float]] = [[] for _ in range(k)]
            stop = time.perf_counter() + seconds

            def worker(i: int) -> None:
                stream = torch.cuda.Stream(device) if cuda else None
                with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    while time.perf_counter() < stop:
                        t0 = time.perf_counter()
                        step(i, *users[i])
                        if stream is not None:
                            stream.synchronize()
                        lat[i].append((time.perf_counter() - t0) * 1e3)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            flat = [x for xs in lat for x in xs]
            rows.append(
                {
                    "path": f"{name} threads",
                    "concurrency": k,
                    "requests": len(flat),
                    "rps": len(flat) / elapsed,
                    "p50_ms": pct(flat, 50),
                    "p99_ms": pct(flat, 99),
                }
            )
    if cuda:
        rows += batched_throughput(fused, users, concurrency, seconds, device)
    return rows


def batched_throughput(fused: FusedHSTU, users: list, concurrency: list[int], seconds: float, device: torch.device) -> list[dict]:
    """One caller ranks k users' KV hits together, two ways: `graphed batched` copies each K/V
    into a padded graph buffer first (`GraphedRank`); `paged batched` keeps each user's K/V in
    pages of a pool laid out as `Pool` lays it out (1 MiB pages, shuffled) and reads it in place
    (`PagedRank`, what hstu_pool runs)."""
    model = fused.model
    kvs = [kv for kv, *_ in users]
    tpp = (1 << 20) // (kvs[0].shape[0] * kvs[0].shape[2] * kvs[0].element_size())
    blocks = [-(-kv.shape[1] // tpp) for kv in kvs]
    pool = kvs[0].new_zeros(sum(blocks), kvs[0].shape[0], tpp, kvs[0].shape[2])
    order = torch.randperm(sum(blocks)).tolist()
    tables = []
    for kv, b in zip(kvs, blocks):
        pages, order = order[:b], order[b:]
        for i, page in enumerate(pages):
            rows = kv[:, i * tpp : (i + 1) * tpp]
            pool[page, :, : rows.shape[1]] = rows
        tables.append(pages)
    graphed, paged, rows = GraphedRank(fused), PagedRank(fused, pool), []
    with torch.inference_mode():
        for k in concurrency:
            mine = [(t, kv, c, gap) for t, (kv, _, c, _, gap) in zip(tables, users[:k])]
            ways = {
                "graphed batched": lambda: graphed.rank_many([RankInput(kv, model.item_emb(c), g) for _, kv, c, g in mine]),
                "paged batched": lambda: paged.rank_many([PagedInput(t, kv.shape[1], model.item_emb(c), g) for t, kv, c, g in mine]),  # noqa: E501
            }
            for path, batch in ways.items():
                rounds = max(5, int(seconds / max(1e-3, statistics.median(wall_ms(batch, device, 5, warmup=2)) / 1e3)))
                lat = wall_ms(batch, device, rounds, warmup=0)
                rows.append({"path": path, "concurrency": k, "requests": k * rounds, "rps": k * 1e3 / statistics.mean(lat),
                             "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)})  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------- (b) Triton
def model_compute_us(client, models: tuple[str, ...]) -> dict:
    """Triton's own per-request averages (queue, input, infer, output), microseconds, per model."""
    stats = client.get_inference_statistics(as_json=True)["model_stats"]
    out = {}
    for m in stats:
        if m["name"] in models:
            s = m["inference_stats"]
            count = max(1, int(s["success"]["count"]))
            out[m["name"]] = {
                k: int(s[k]["ns"]) / count / 1e3 for k in ("queue", "compute_input", "compute_infer", "compute_output")
            }
    return out


# A Python-backend model with hstu_pool's inputs that does no work: what tritonserver, the
# backend stub's shared-memory round trip and the gRPC client cost for this payload alone.
FLOOR_MODEL = "transport_floor"
FLOOR_SOURCE = '''"""Benchmark fixture (bench/gpu.py): answers zeros of the right shape, computes nothing."""
import torch
import triton_python_backend_utils as pb_utils
from helmrec import schema
from helmrec.serving.triton_io import input_tensor, output_tensor


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=[output_tensor(schema.SCORES, torch.zeros(input_tensor(r, schema.CANDIDATE_ITEM_IDS).shape[0], 1))]
            )
            for r in requests
        ]
'''


def add_floor_model(repo: Path) -> None:
    """Stage FLOOR_MODEL next to hstu_pool with the same inputs and output."""
    config = (repo / schema.POOL_MODEL / "config.pbtxt").read_text().split("parameters [")[0]
    (repo / FLOOR_MODEL / "1").mkdir(parents=True)
    (repo / FLOOR_MODEL / "config.pbtxt").write_text(config.replace(f'name: "{schema.POOL_MODEL}"', f'name: "{FLOOR_MODEL}"'))
    (repo / FLOOR_MODEL / "1" / "model.py").write_text(FLOOR_SOURCE)


def triton_vs_in_process(args: argparse.Namespace) -> dict:
    """The same request through tritonserver and in-process. `--kv hit`: one user sends the same
    history every time (after the first, a full KV hit: the graphed rank step only); `--kv miss`:
    every request comes from a new user (a full prefill each time); `--kv grow`: one user whose
    history gains one event per request (a returning user: a partial hit, one new token)."""
    import itertools

    import numpy as np
    import tritonclient.grpc as grpcclient

    from helmrec.hstu.weights import load
    from helmrec.launcher import TritonServer
    from helmrec.launcher.repository import WEIGHTS, stage_repository
    from helmrec.load.client import infer_inputs
    from helmrec.pool.config import PoolConfig
    from helmrec.pool.ranker import PooledRanker, RankRequest
    from helmrec.serving.network import serving_dtype

    pool = {"pool_bytes": str(args.pool_bytes), "page_bytes": str(args.page_bytes), "alpha": "0.5", "controller": "static"}
    gen = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        repo = stage_repository(Path(tmp) / "model_repository", args.preset, args.seed, pool_parameters=pool)
        model = load(repo / WEIGHTS).eval()
        n, c = args.history, args.candidates
        extra = 3 * (args.requests + 10) if args.kv == "grow" else 0  # events the growing user adds
        if n + extra > model.config.max_seq_len:
            raise SystemExit(f"--history {n} + {extra} grown events exceed the preset's max_seq_len {model.config.max_seq_len}")
        ids, ts, actions, cands, query = (t.cpu() for t in make_history(model, n + extra, c, gen, torch.device("cpu")))

        def arrays(length: int) -> dict:
            return schema.ensemble_request(7, ids[:length].numpy(), ts[:length].numpy(), cands.numpy(), actions[:length].numpy())

        request = arrays(n)
        users, served_len = itertools.count(1_000), itertools.count(n)

        def infer(client, model: str):
            if args.kv == "hit":
                now = request
            elif args.kv == "grow":
                now = arrays(next(served_len))
            else:
                now = {**request, schema.USER_ID: np.array([next(users)], np.int64)}
            if model != schema.ENSEMBLE_MODEL:  # hstu_pool and the floor model batch: each request is [1, n]
                now = {name: value[None] for name, value in now.items()}
            return client.infer(model, infer_inputs(grpcclient, now))

        add_floor_model(repo)
        with TritonServer(model_repository=repo, device=args.device) as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            live_ms = wall_ms(client.is_server_live, torch.device("cpu"), args.requests, warmup=10)
            floor_ms = wall_ms(lambda: infer(client, FLOOR_MODEL), torch.device("cpu"), args.requests, warmup=10)
            triton_ms = wall_ms(lambda: infer(client, schema.ENSEMBLE_MODEL), torch.device("cpu"), args.requests, warmup=10)
            # hstu_pool without the ensemble around it: what the one-step ensemble itself costs.
            direct_ms = wall_ms(lambda: infer(client, schema.POOL_MODEL), torch.device("cpu"), args.requests, warmup=10)
            per_model = model_compute_us(client, (schema.ENSEMBLE_MODEL, schema.POOL_MODEL, FLOOR_MODEL))
        device = torch.device(args.device)
        model = model.to(device, serving_dtype("auto", device))  # what hstu_pool serves with dtype "auto"
        config = PoolConfig(args.pool_bytes, args.page_bytes, 0.5, 268435456.0, 8, device=str(device))
        local_len = itertools.count(n)

        def request_of() -> RankRequest:
            if args.kv == "grow":
                k = next(local_len)
                return RankRequest(7, ids[:k], ts[:k], actions[:k], cands, int(ts[k - 1]))
            return RankRequest(7 if args.kv == "hit" else next(users), ids[:n], ts[:n], actions[:n], cands, int(ts[n - 1]))

        with PooledRanker(model, config) as ranker:
            local_ms = wall_ms(lambda: ranker.rank(request_of()), device, args.requests, warmup=10)
    return {
        "device": args.device,
        "preset": args.preset,
        "history": n,
        "candidates": c,
        "requests": args.requests,
        "kv": args.kv,
        "dtype": str(model.item_emb.weight.dtype),
        "triton_p50_ms": pct(triton_ms, 50),
        "triton_p99_ms": pct(triton_ms, 99),
        "hstu_pool_direct_p50_ms": pct(direct_ms, 50),
        "server_side_us_per_request": per_model,
        "grpc_is_server_live_p50_ms": pct(live_ms, 50),
        "transport_floor_p50_ms": pct(floor_ms, 50),
        "in_process_p50_ms": pct(local_ms, 50),
        "in_process_p99_ms": pct(local_ms, 99),
        "ratio_p50": pct(triton_ms, 50) / pct(local_ms, 50),
    }


# ---------------------------------------------------------------------------------- report
def _table(title: str, rows: list[dict], cols: list[str]) -> Table:
    table = Table(title=title)
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else ("-" if row[c] is None else str(row[c])) for c in cols))
    return table


def run_in_process(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg = preset(args.preset) if args.variant is None else dataclasses.replace(preset(args.preset), variant=args.variant)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.device(device):
        model32 = HSTU(cfg).eval()
    model = copy.deepcopy(model32).to(dtype)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "dtype": args.dtype,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        import triton

        report["triton"] = triton.__version__
    report["correctness"] = check_correctness(model32, model, device, min(args.histories), args.candidates, gen)
    console.print(report["correctness"])
    del model32
    report["latency"] = lat = rank_latency(model, device, args.histories, args.candidates, args.iters, gen)
    console.print(
        _table(
            f"(a) rank latency, {args.preset} {args.dtype}, {args.candidates} candidates",
            lat,
            ["history", "path", "p50_ms", "p90_ms", "device_ms"],
        )
    )
    longest = max(args.histories)
    p50 = {r["path"]: r["p50_ms"] for r in lat if r["history"] == longest}
    best_hit = min(v for k, v in p50.items() if "KV hit" in k)
    best_prefill = min(v for k, v in p50.items() if "full prefill" in k)
    report["headline_hit_vs_prefill"] = best_prefill / best_hit
    console.print(
        f"history {longest}: eager hit vs eager prefill {p50['eager full prefill'] / p50['eager KV hit']:.2f}x, "
        f"fused hit vs fused prefill {p50['fused full prefill'] / p50['fused KV hit']:.2f}x"
        + (
            f", graphed hit vs graphed prefill {p50['graphed full prefill'] / p50['graphed KV hit']:.2f}x"
            if "graphed KV hit" in p50
            else ""
        )
    )
    dev = {r["path"]: r["device_ms"] for r in lat if r["history"] == longest}
    for kind in ("eager", "fused"):
        if dev.get(f"{kind} full prefill") and dev.get(f"{kind} KV hit"):
            report[f"device_hit_vs_prefill_{kind}"] = dev[f"{kind} full prefill"] / dev[f"{kind} KV hit"]
            console.print(
                f"history {longest}: {kind} device time, full prefill / KV hit = {report[f'device_hit_vs_prefill_{kind}']:.2f}x"
            )
    console.print(f"history {longest}: best full prefill P50 / best KV-hit rank P50 = {report['headline_hit_vs_prefill']:.2f}x")
    report["ceilings"] = ceil = ceilings(device, dtype)
    shapes = (
        [("causal", n, n) for n in args.histories + [16384]]
        + [("candidate", n, args.candidates) for n in args.histories]
        + [("candidate", 16384, 2048)]
    )
    shapes = [s for s in shapes if max(s[1], s[2]) <= cfg.max_seq_len]
    report["kernels"] = kern = kernel_throughput(cfg, device, dtype, shapes, gen)
    for row in kern:
        row["share_of_matmul"] = row["tflops"] / ceil["matmul_tflops"]
        row["share_of_copy_bw"] = row["gbs"] / ceil["copy_gbs"]
    console.print(
        _table(
            f"(c) attention kernels vs ceilings: matmul {ceil['matmul_tflops']:.0f} TFLOP/s, copy {ceil['copy_gbs']:.0f} GB/s",
            kern,
            ["op", "keys", "queries", "ms", "tflops", "share_of_matmul", "gbs", "share_of_copy_bw", "speedup_vs_eager"],
        )
    )
    top = max(kern, key=lambda r: r["tflops"])
    console.print(
        f"best kernel: {top['op']} {top['keys']}x{top['queries']} at {top['tflops']:.0f} TFLOP/s"
        f" = {top['share_of_matmul']:.0%} of measured bf16 matmul"
    )
    if args.sweep_tiles and device.type == "cuda":
        report["tile_sweep"] = sw = sweep_tiles(cfg, device, dtype, gen)
        console.print(_table("tile sweep (device ms)", sw, ["case", "keys", "queries", "tiles", "ms"]))
        for case in dict.fromkeys((r["case"], r["keys"]) for r in sw):
            rows = [r for r in sw if (r["case"], r["keys"]) == case]
            best = min(rows, key=lambda r: r["ms"])
            console.print(f"{case}: best {best['tiles']} {best['ms']:.4f} ms vs default {rows[0]['ms']:.4f} ms")
    report["throughput"] = tp = throughput(
        model, device, args.throughput_history, args.candidates, args.concurrency, args.seconds, gen
    )
    console.print(
        _table(
            f"(d) KV-hit rank throughput, history {args.throughput_history}",
            tp,
            ["path", "concurrency", "requests", "rps", "p50_ms", "p99_ms"],
        )
    )
    best = {k: max(r["rps"] for r in tp if r["concurrency"] == k) for k in args.concurrency}
    console.print(f"throughput at concurrency {max(args.concurrency)} / at 1 = {best[max(args.concurrency)] / best[1]:.2f}x")
    return report


def run_batched(args: argparse.Namespace) -> dict:
    """Only the batched KV-hit rank, copied (`graphed batched`) against in place (`paged batched`),
    at `--throughput-history` x `--candidates` for each `--concurrency`: the quick check of a
    change to the paged kernels (a minute of device time, docs/gpu.md (g))."""
    device = torch.device(args.device)
    if device.type != "cuda":
        raise SystemExit("--batched-only needs a CUDA device (CUDA graphs)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.device(device):
        model = HSTU(preset(args.preset)).eval()
    model = model.to(dtype)
    fused = FusedHSTU(model)
    n, c = args.throughput_history, args.candidates
    users = []
    with torch.inference_mode():
        for _ in range(max(args.concurrency)):
            ids, ts, actions, cands, query = make_history(model, n, c, gen, device)
            users.append((fused.prefill(model.item_emb(ids), ts, actions), ts, cands, query, int(query) - int(ts[-1])))
    rows = batched_throughput(fused, users, args.concurrency, args.seconds, device)
    console.print(_table(f"batched KV-hit rank, history {n}, {c} candidates", rows, ["path", "concurrency", "rps", "p50_ms"]))
    return {"device": torch.cuda.get_device_name(device), "preset": args.preset, "dtype": args.dtype, "history": n,
            "candidates": c, "batched": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="large")
    parser.add_argument("--variant", choices=("research", "production"), help="override the preset's variant (CPU smoke runs)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--histories", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--throughput-history", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-tiles", action="store_true", help="also time the kernels under forced tiles/splits")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--triton", action="store_true", help="(b): through tritonserver on the GPU vs in-process")
    parser.add_argument(
        "--batched-only", action="store_true", help="only the batched rank, copied vs in place from pages (--throughput-history)"
    )
    parser.add_argument("--history", type=int, default=1024, help="--triton: history length")
    parser.add_argument(
        "--kv",
        choices=("hit", "miss", "grow"),
        default="hit",
        help="--triton: repeat one user (KV hit), a new user per request (full prefill), "
        "or one user gaining an event per request (partial hit)",
    )
    parser.add_argument("--requests", type=int, default=200, help="--triton: timed requests per side")
    parser.add_argument("--pool-bytes", type=int, default=8 << 30, help="--triton: hstu_pool pool_bytes")
    parser.add_argument("--page-bytes", type=int, default=1 << 20, help="--triton: hstu_pool page_bytes")
    args = parser.parse_args(argv)
    if args.concurrency[0] != 1:
        parser.error("--concurrency must start with 1 (the baseline of the headline ratio)")
    if args.batched_only:
        report = run_batched(args)
    elif args.triton:
        report = triton_vs_in_process(args)
        console.print(report)
        console.print(f"Triton end-to-end P50 / in-process P50 = {report['ratio_p50']:.2f}x")
    else:
        report = run_in_process(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
