"""Measure the cost-model constants on this machine: `python -m helmrec.allocator.calibrate`.

Times real torch ops of HSTU layer shape (the `CALIBRATION_SHAPE` below; one
thread, fp32 on the CPU, or `--device cuda` in bf16 on a GPU, eager kernels
synchronised around each timing) and fits the per-token and per-candidate
costs that `allocator/cost_model.py` records. On a GPU the EMB row costs are
the node's: a missed row is gathered from a pinned host table and copied to
the device, a hit row is gathered from a device slab. The layer is written out here from its
published equations (docs/model.md, research variant) rather than
imported from helmrec.hstu, so calibration never depends on trained
weights or on the model package's import graph; the FLOP shape is the same.

Prints the fitted constants and the raw timings, so a reviewer can re-run it
and compare with the values committed in cost_model.py.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CalibrationShape:
    """HSTU shape timed here (between the ml100k and large presets)."""

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    d_qk: int = 64
    d_v: int = 64
    table_rows: int = 200_000  # host item table for the gather timing (200k x 256 fp32 = 205 MB)


CALIBRATION_SHAPE = CalibrationShape()


class _Layer(torch.nn.Module):
    """One HSTU layer: fused u,v,q,k projection, pointwise SiLU attention, gated output."""

    def __init__(self, s: CalibrationShape) -> None:
        super().__init__()
        self.s = s
        self.uvqk = torch.nn.Linear(s.d_model, s.num_heads * (2 * s.d_v + 2 * s.d_qk))
        self.out = torch.nn.Linear(s.num_heads * s.d_v, s.d_model)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.s
        h = F.silu(self.uvqk(F.layer_norm(x, (s.d_model,))))
        u, v, q, k = torch.split(h, [s.num_heads * s.d_v] * 2 + [s.num_heads * s.d_qk] * 2, dim=-1)
        return u, v, q, k

    def attend(self, x: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor) -> torch.Tensor:
        """Queries from `x` attend to (k_all, v_all): prefill when x is the history, rank when x is candidates."""
        s = self.s
        u, _, q, _ = self.project(x)
        qh = q.view(-1, s.num_heads, s.d_qk).transpose(0, 1)
        kh = k_all.view(-1, s.num_heads, s.d_qk).transpose(0, 1)
        vh = v_all.view(-1, s.num_heads, s.d_v).transpose(0, 1)
        a = F.silu(qh @ kh.transpose(1, 2)) / k_all.shape[0]
        y = (a @ vh).transpose(0, 1).reshape(x.shape[0], -1)
        return x + self.out(u * F.layer_norm(y, (y.shape[-1],)))


def _time_us(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` in microseconds, the device drained before and after each call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples)) * 1e6


def measure(shape: CalibrationShape = CALIBRATION_SHAPE, repeats: int = 7, device: str = "cpu") -> dict[str, float]:
    """Fit the compute and gather constants of `cost_model.CostModel` from timings on `device`."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    torch.set_num_threads(1)
    layers = [_Layer(shape).eval().to(dev, dtype) for _ in range(shape.num_layers)]

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size).to(dev, dtype)

    out: dict[str, float] = {}
    with torch.inference_mode():
        # Prefill of n tokens through every layer: fit t = a + b n + c n^2 in relative error, so the
        # few-token suffixes of incremental prefill are fitted as well as the long cold prefills.
        ns = np.array([4, 16, 64, 256, 1024])
        tp = []
        for n in ns:
            x = randn(int(n), shape.d_model)

            def prefill(x=x) -> None:
                h = x
                for layer in layers:
                    _, v, _, k = layer.project(h)
                    h = layer.attend(h, k, v)

            tp.append(_time_us(prefill, repeats, dev))
        c2, c1, c0 = np.polyfit(ns, tp, 2, w=1.0 / np.array(tp))
        out.update(prefill_fixed_us=float(c0), prefill_token_us=float(c1), prefill_token2_us=float(c2))
        # Rank of c candidates against an n-token cached history: fit t = a + b c + d c n.
        grid = [(c, n) for c in (64, 256) for n in (128, 512, 1024)]
        tr = []
        for c, n in grid:
            cand = randn(c, shape.d_model)
            kv = [(randn(n, shape.num_heads * shape.d_qk), randn(n, shape.num_heads * shape.d_v)) for _ in layers]

            def rank(cand=cand, kv=kv) -> None:
                h = cand
                for layer, (k, v) in zip(layers, kv):
                    h = layer.attend(h, k, v)

            tr.append(_time_us(rank, repeats, dev))
        design = np.array([[1.0, c, c * n] for c, n in grid])
        weight = 1.0 / np.array(tr)[:, None]
        (r0, r1, r2), *_ = np.linalg.lstsq(design * weight, np.ones(len(tr)), rcond=None)
        out.update(rank_fixed_us=float(r0), rank_candidate_us=float(r1), rank_candidate_token_us=float(r2))
        # A missed row: host gather of random rows from a table larger than the CPU caches (on a GPU
        # node from pinned memory, then copied to the device).
        table = torch.randn(shape.table_rows, shape.d_model).to(dtype)
        rows = 4096
        idx = torch.randint(0, shape.table_rows, (rows,))
        if dev.type == "cuda":
            table = table.pin_memory()
            staging = torch.empty(rows, shape.d_model, dtype=dtype).pin_memory()

            def miss() -> None:
                torch.index_select(table, 0, idx, out=staging)
                staging.to(dev, non_blocking=True)

            out["host_gather_row_us"] = _time_us(miss, repeats, dev) / rows
        else:
            out["host_gather_row_us"] = _time_us(lambda: table.index_select(0, idx), repeats, dev) / rows
        # A hit row: the same gather from a small slab where the pool lives (cache- or HBM-resident).
        slab = table[:8192].to(dev).clone()
        idx_hot = torch.randint(0, 8192, (rows,), device=dev)
        out["pool_gather_row_us"] = _time_us(lambda: slab.index_select(0, idx_hot), repeats, dev) / rows
    out["raw_prefill_us"] = dict(zip(ns.tolist(), [round(t, 1) for t in tp]))  # type: ignore[assignment]
    out["raw_rank_us"] = {f"c={c},n={n}": round(t, 1) for (c, n), t in zip(grid, tr)}  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helmrec.allocator.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu (fp32, one thread) or cuda (bf16)")
    args = parser.parse_args(argv)
    result = measure(repeats=args.repeats, device=args.device)
    print(f"shape: {CALIBRATION_SHAPE}, device {args.device}")
    for key, value in result.items():
        print(f"{key:26s} {value if isinstance(value, dict) else f'{value:.4f}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
