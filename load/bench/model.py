"""Cached vs uncached HSTU inference on one device: equivalence and speed.

`python -m helmrec.load.bench.model --preset large --device cuda` builds a
seeded network, checks that rank(prefill(h)) equals forward(h) and that
extend equals one prefill, then times, for each history length, the uncached
forward (what a server without a KV cache runs per request) against the cached
paths: rank alone (a full KV hit), extend by `--new` tokens + rank (a partial
hit), and prefill + rank (a miss). The last line is the headline ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `fn` in ms, after two warm-ups, synchronising the device."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return sorted(samples)[len(samples) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64])
    parser.add_argument("--candidates", type=int, default=None, help="default: the preset's max_candidates")
    parser.add_argument("--new", type=int, default=16, help="tokens appended since the cached prefix")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    model = HSTU(cfg).to(device=device, dtype=DTYPES[args.dtype]).eval()
    c = args.candidates or cfg.max_candidates
    print(f"{args.preset} ({cfg.variant}) on {device} {args.dtype}: {c} candidates, +{args.new} new tokens")
    print(f"{'n':>6s} {'max|rank-fwd|':>14s} {'max|ext-pre|':>13s} {'forward ms':>11s} {'rank ms':>8s} "
          f"{'extend+rank':>12s} {'prefill+rank':>13s}")
    ratio = 0.0
    with torch.inference_mode():
        for n in args.lengths:
            gen = torch.Generator().manual_seed(n)
            ids = torch.randint(0, cfg.num_items, (n,), generator=gen).to(device)
            ts = (1_700_000_000 + torch.cumsum(torch.randint(0, 10**5, (n,), generator=gen), 0)).to(device)
            acts = torch.randint(0, cfg.num_actions, (n,), generator=gen).to(device)
            cand = model.embed_items(torch.randint(0, cfg.num_items, (c,), generator=gen).to(device))
            emb = model.embed_items(ids)
            q = int(ts[-1]) + 60
            kv = model.prefill(emb, ts, acts)
            n0 = max(0, n - args.new)
            prefix = kv[:, :n0]
            diff_rank = (model.rank(kv, ts, cand, q) - model(emb, ts, acts, cand, q)).abs().max().item()
            diff_ext = (model.extend(prefix, emb[n0:], ts, acts[n0:]) - kv).abs().max().item()
            t_fwd = _time_ms(lambda: model(emb, ts, acts, cand, q), device, args.repeats)
            t_rank = _time_ms(lambda: model.rank(kv, ts, cand, q), device, args.repeats)
            t_ext = _time_ms(
                lambda: model.rank(model.extend(prefix, emb[n0:], ts, acts[n0:]), ts, cand, q), device, args.repeats
            )
            t_pre = _time_ms(lambda: model.rank(model.prefill(emb, ts, acts), ts, cand, q), device, args.repeats)
            ratio = t_fwd / t_ext
            print(f"{n:6d} {diff_rank:14.2e} {diff_ext:13.2e} {t_fwd:11.2f} {t_rank:8.2f} {t_ext:12.2f} {t_pre:13.2f}")
    print(f"uncached forward / (extend +{args.new} + rank) at n={args.lengths[-1]}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
