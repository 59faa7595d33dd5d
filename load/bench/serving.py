"""Latency of `hstu_ensemble` through a real tritonserver vs the same network in-process.

    python -m helmrec.load.bench.serving [--preset tiny|ml100k] [--requests 300] [--history 50] [--candidates 64]

Both sides score the same seeded requests in the same run; the last line is the
headline ratio (Triton end-to-end P50 / in-process P50). The difference is what
serving costs: gRPC, the ensemble's two steps, the Python-backend IPC and BLS.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient
from rich.console import Console
from rich.table import Table

from helmrec import schema
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import load
from helmrec.launcher import TritonServer
from helmrec.launcher.repository import WEIGHTS, stage_repository
from helmrec.load.client import infer_inputs


def make_requests(num_items: int, n: int, history: int, candidates: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ts = np.sort(rng.integers(1_600_000_000, 1_700_000_000, history)).astype(np.int64)
        out.append(
            {
                schema.USER_ID: np.array([i], np.int64),
                schema.HISTORY_ITEM_IDS: rng.integers(0, num_items, history).astype(np.int64),
                schema.HISTORY_TIMESTAMPS: ts,
                schema.HISTORY_ACTIONS: rng.integers(0, 2, history).astype(np.int32),
                schema.CANDIDATE_ITEM_IDS: rng.integers(0, num_items, candidates).astype(np.int64),
            }
        )
    return out


def time_triton(server: TritonServer, requests: list[dict[str, np.ndarray]], warmup: int) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    lat = []
    for i, request in enumerate(requests):
        inputs = infer_inputs(grpcclient, request)
        t0 = time.perf_counter()
        client.infer(schema.ENSEMBLE_MODEL, inputs)
        if i >= warmup:
            lat.append(time.perf_counter() - t0)
    return np.array(lat) * 1e3


def time_in_process(model: HSTU, requests: list[dict[str, np.ndarray]], warmup: int) -> np.ndarray:
    lat = []
    with torch.inference_mode():
        for i, r in enumerate(requests):
            t0 = time.perf_counter()
            model.score(
                torch.from_numpy(r[schema.HISTORY_ITEM_IDS]),
                torch.from_numpy(r[schema.HISTORY_TIMESTAMPS]),
                torch.from_numpy(r[schema.HISTORY_ACTIONS].astype(np.int64)),
                torch.from_numpy(r[schema.CANDIDATE_ITEM_IDS]),
                int(r[schema.HISTORY_TIMESTAMPS][-1]),
            )
            if i >= warmup:
                lat.append(time.perf_counter() - t0)
    return np.array(lat) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        repo = stage_repository(Path(tmp) / "model_repository", args.preset, args.seed)
        model = load(repo / WEIGHTS).eval()
        requests = make_requests(model.config.num_items, args.requests + args.warmup, args.history, args.candidates, args.seed)
        with TritonServer(model_repository=repo, device="cpu", extra_env={"OMP_NUM_THREADS": "1"}) as server:
            triton = time_triton(server, requests, args.warmup)
        local = time_in_process(model, requests, args.warmup)

    table = Table(
        title=f"hstu_ensemble on CPU, preset {args.preset}, history {args.history}, "
        f"{args.candidates} candidates, {args.requests} requests"
    )
    for col in ("path", "P50 ms", "P99 ms", "mean ms"):
        table.add_column(col)
    for name, lat in (("in-process model.score", local), ("tritonserver gRPC end-to-end", triton)):
        table.add_row(name, f"{np.percentile(lat, 50):.3f}", f"{np.percentile(lat, 99):.3f}", f"{lat.mean():.3f}")
    console = Console()
    console.print(table)
    console.print(f"Triton end-to-end P50 / in-process P50 = {np.percentile(triton, 50) / np.percentile(local, 50):.2f}x")


if __name__ == "__main__":
    main()
