"""The shared pool under a Zipf workload: hit rate vs alpha, latency by KV outcome, H2D by kind.

    python -m helmrec.load.bench.pool --device cpu|cuda [--preset ml100k] [--json OUT]

Three measurements, all in one run on the same random-weight network (the
cache does not care what the weights learned):

1. Hit rate vs alpha: for each fixed alpha, a fresh `PooledRanker` serves the
   same seeded Steady trace from `helmrec.workload.traces` (Zipf users and items,
   prefix-growing histories); the first quarter warms the caches.
2. Latency of one request at a KV miss (prefill of the whole history), a
   partial hit (extend the last `--growth` tokens) and a full hit, with the
   embeddings warm so only the KV outcome differs. The miss is the baseline.
3. An alpha sweep 0.1 -> 0.9 -> 0.1 while the trace flows: H2D bytes on the
   critical path (request misses), in the background (admission + refill),
   and on the critical path *caused by moves*, measured as the critical bytes
   counted while only background work (moves included) ran: must be 0.

Background work is driven synchronously between requests with the trace's
inter-arrival time as elapsed time, so the refill throttle sees the trace's
clock and the run is reproducible. The last printed line is the headline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from helmrec.hstu.config import preset
from helmrec.hstu.model import HSTU
from helmrec.pool.config import PoolConfig
from helmrec.pool.ranker import PooledRanker, RankRequest
from helmrec.workload.traces import TraceConfig, generate

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SWEEP = (0.1, 0.3, 0.5, 0.7, 0.9, 0.7, 0.5, 0.3, 0.1)
# device -> (preset, item-table rows, pool_bytes, page_bytes, refill bytes/s, pages per move step).
# On CPU the ml100k network gets a 50k-row item table (12.8 MB, 6x the pool) so
# that, as in production, the EMB side cannot hold every row and alpha is a real
# trade-off. On CUDA the refill may use 4 GB/s, a small share of a PCIe 5 x16 link.
DEFAULTS = {
    "cpu": ("ml100k", 50_000, 2 << 20, 16 << 10, 64e6, 4),
    "cuda": ("large", None, 2 << 30, 2 << 20, 4e9, 16),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--preset", help="HSTU preset (default: ml100k on cpu, large on cuda)")
    p.add_argument("--num-items", type=int, help="item-table rows (default: 50000 on cpu, the preset's on cuda)")
    p.add_argument("--pool-bytes", type=int, help="pool size (default: 2 MiB on cpu, 2 GiB on cuda)")
    p.add_argument("--page-bytes", type=int, help="page size (default: 16 KiB on cpu, 2 MiB on cuda)")
    p.add_argument("--refill-bytes-per-s", type=float, help="background H2D throttle (default: 64e6 cpu, 4e9 cuda)")
    p.add_argument("--max-move-pages", type=int, help="pages moved per background step (default: 4 cpu, 16 cuda)")
    p.add_argument("--requests", type=int, default=800, help="requests per alpha point")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--hot-users", type=int, default=40)
    p.add_argument("--mean-history", type=float, default=40.0)
    p.add_argument("--growth-per-s", type=float, default=1.0, help="items a user adds to their history per second")
    p.add_argument("--item-zipf", type=float, default=0.9, help="Zipf exponent of item popularity")
    p.add_argument("--growth", type=int, default=4, help="new tokens of the partial-hit latency case")
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--rate", type=float, default=400.0, help="trace arrival rate, req/s")
    p.add_argument("--latency-reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


class Workload:
    """A seeded Steady trace turned into `RankRequest`s for one network's id ranges."""

    def __init__(self, args: argparse.Namespace, num_items: int, num_actions: int, max_len: int, count: int) -> None:
        cfg = TraceConfig(
            num_users=args.users,
            num_items=num_items,
            hot_users=min(args.hot_users, args.users),
            mean_history_len=args.mean_history,
            history_growth_per_s=args.growth_per_s,
            item_zipf=args.item_zipf,
            max_history_len=max_len,
            arrival_rate=args.rate,
            candidates=args.candidates,
            duration_s=1.2 * count / args.rate,
            seed=args.seed,
        )
        self.trace = generate(cfg)
        if len(self.trace) < count:
            raise ValueError(f"trace has {len(self.trace)} requests, {count} asked for; raise --rate")
        self.count = count
        self.num_actions = num_actions

    def request(self, i: int) -> RankRequest:
        ids = torch.from_numpy(self.trace.history_ids(i))
        return RankRequest(
            user_id=int(self.trace.user_id[i]),
            hist_ids=ids,
            hist_ts=torch.from_numpy(self.trace.history_timestamps(i)),
            hist_actions=ids % self.num_actions,  # fixed per position, so prefixes stay prefixes
            cand_ids=torch.from_numpy(self.trace.candidate_ids(i)),
            query_ts=self.trace.request_timestamp(i),
        )

    def gap_s(self, i: int) -> float:
        return float(self.trace.t_s[i] - self.trace.t_s[i - 1]) if i else 0.0


def make_ranker(model: HSTU, args: argparse.Namespace, alpha: float) -> PooledRanker:
    config = PoolConfig(
        pool_bytes=args.pool_bytes,
        page_bytes=args.page_bytes,
        alpha=alpha,
        refill_bandwidth_bytes_per_s=args.refill_bytes_per_s,
        max_move_pages_per_step=args.max_move_pages,
        device=args.device,
    )
    return PooledRanker(model, config, background_interval_s=None)


def timed_rank(ranker: PooledRanker, req: RankRequest) -> float:
    start = time.perf_counter()
    ranker.rank(req)  # returns CPU scores, so a CUDA run is synchronised here
    return 1000.0 * (time.perf_counter() - start)


def hit_rate_curve(model: HSTU, work: Workload, args: argparse.Namespace) -> list[dict[str, float]]:
    warm = work.count // 4
    rows = []
    for alpha in ALPHAS:
        with make_ranker(model, args, alpha) as ranker:
            ms = []
            for i in range(work.count):
                if i == warm:
                    ranker.stats()  # the measured window starts after warm-up
                    ms.clear()
                ms.append(timed_rank(ranker, work.request(i)))
                ranker.step_background(work.gap_s(i + 1) if i + 1 < work.count else 0.0)
            s = ranker.stats()
        rows.append(
            {
                "alpha": alpha,
                "emb_hit_rate": s.emb_hit_rate,
                "kv_hit_rate": s.kv_hit_rate,
                "kv_token_hit_rate": s.kv_token_hit_rate,
                "h2d_critical_bytes_per_request": s.h2d_critical_bytes / max(s.requests, 1),
                "mean_ms": float(np.mean(ms)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        )
    return rows


def kv_latency(model: HSTU, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median/P99 of one request by KV outcome; history 3/4 of max_seq_len, embeddings warm."""
    cfg = model.config
    n = (3 * cfg.max_seq_len) // 4
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.num_items, (n,), generator=gen)
    ts = 1_700_000_000 + 60 * torch.arange(n)
    acts = ids % cfg.num_actions
    cand = torch.randint(0, cfg.num_items, (min(args.candidates, cfg.max_candidates),), generator=gen)
    short = n - args.growth
    times: dict[str, list[float]] = {"kv_miss": [], "kv_partial_hit": [], "kv_hit": []}
    with make_ranker(model, args, 0.5) as ranker:
        warm = RankRequest(0, ids, ts, acts, cand, int(ts[-1]) + 60)
        for _ in range(3):  # admit every row: the three cases then differ only in the KV outcome
            ranker.rank(warm)
            ranker.step_background(1.0)
        for rep in range(args.latency_reps):
            user = 1 + 3 * rep  # fresh users: nothing cached for them yet
            full = RankRequest(user, ids, ts, acts, cand, int(ts[-1]) + 60)
            times["kv_miss"].append(timed_rank(ranker, full))
            times["kv_hit"].append(timed_rank(ranker, full))
            prefix = RankRequest(user + 1, ids[:short], ts[:short], acts[:short], cand, int(ts[short - 1]) + 60)
            ranker.rank(prefix)
            times["kv_partial_hit"].append(timed_rank(ranker, RankRequest(user + 1, ids, ts, acts, cand, int(ts[-1]) + 60)))
        s = ranker.stats()
        if s.kv_cached_users == 0:
            raise RuntimeError("no KV prefix fits in the pool's KV half: raise --pool-bytes")
    return {
        case: {"p50_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)), "history_len": n}
        for case, v in times.items()
    }


def alpha_sweep(model: HSTU, work: Workload, args: argparse.Namespace) -> dict[str, object]:
    per = work.count // len(SWEEP)
    segments = []
    with make_ranker(model, args, SWEEP[0]) as ranker:
        i = 0
        for alpha in SWEEP:
            ranker.set_alpha(alpha)
            seg = {"alpha": alpha, "critical_bytes": 0, "background_bytes": 0, "move_critical_bytes": 0, "moved_pages": 0}
            for _ in range(per):
                ranker.rank(work.request(i))
                during_request = ranker.stats()
                emb_before = during_request.emb_pages
                ranker.step_background(work.gap_s(i + 1))
                during_background = ranker.stats()  # window = one background step (moves + refill) only
                seg["critical_bytes"] += during_request.h2d_critical_bytes
                seg["background_bytes"] += during_request.h2d_background_bytes + during_background.h2d_background_bytes
                seg["move_critical_bytes"] += during_background.h2d_critical_bytes
                seg["moved_pages"] += abs(during_background.emb_pages - emb_before)
                i += 1
            seg["alpha_reached"] = ranker.alpha
            segments.append(seg)
    return {
        "segments": segments,
        "critical_bytes": sum(s["critical_bytes"] for s in segments),
        "background_bytes": sum(s["background_bytes"] for s in segments),
        "move_critical_bytes": sum(s["move_critical_bytes"] for s in segments),
        "moved_pages": sum(s["moved_pages"] for s in segments),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    name, num_items, pool_bytes, page_bytes, refill, max_move = DEFAULTS[kind]
    args.refill_bytes_per_s = args.refill_bytes_per_s or refill
    args.max_move_pages = args.max_move_pages or max_move
    args.preset = args.preset or name
    args.num_items = args.num_items or num_items or preset(args.preset).num_items
    args.pool_bytes = args.pool_bytes or pool_bytes
    args.page_bytes = args.page_bytes or page_bytes
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = HSTU(dataclasses.replace(preset(args.preset), num_items=args.num_items)).eval().to(args.device)
    cfg = model.config
    work = Workload(args, cfg.num_items, cfg.num_actions, cfg.max_seq_len, args.requests)
    args.candidates = min(args.candidates, cfg.max_candidates)

    console = Console()
    console.print(
        f"helmrec.load.bench.pool: device={args.device} preset={args.preset} items={args.num_items} "
        f"pool={args.pool_bytes} B page={args.page_bytes} B "
        f"requests/point={args.requests} users={args.users} candidates={args.candidates} threads={args.threads}"
    )
    curve = hit_rate_curve(model, work, args)
    latency = kv_latency(model, args)
    sweep = alpha_sweep(model, work, args)

    t = Table(title="hit rate vs alpha (Zipf Steady trace, after warm-up)")
    for col in ("alpha", "EMB hit", "KV hit (users)", "KV hit (tokens)", "critical H2D B/req", "mean ms", "p99 ms"):
        t.add_column(col, justify="right")
    for r in curve:
        t.add_row(
            f"{r['alpha']:.1f}", f"{r['emb_hit_rate']:.3f}", f"{r['kv_hit_rate']:.3f}", f"{r['kv_token_hit_rate']:.3f}",
            f"{r['h2d_critical_bytes_per_request']:.0f}", f"{r['mean_ms']:.2f}", f"{r['p99_ms']:.2f}",
        )
    console.print(t)
    t = Table(title=f"latency by KV outcome (history {latency['kv_miss']['history_len']} tokens, EMB warm)")
    for col in ("case", "p50 ms", "p99 ms", "p50 vs miss"):
        t.add_column(col, justify="right")
    base = latency["kv_miss"]["p50_ms"]
    for case, v in latency.items():
        t.add_row(case, f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}", f"{base / v['p50_ms']:.2f}x")
    console.print(t)
    t = Table(title="H2D bytes during the alpha sweep 0.1 -> 0.9 -> 0.1")
    for col in ("alpha", "reached", "pages moved", "critical B", "background B", "critical B from moves"):
        t.add_column(col, justify="right")
    for s in sweep["segments"]:
        t.add_row(
            f"{s['alpha']:.1f}", f"{s['alpha_reached']:.3f}", str(s["moved_pages"]), str(s["critical_bytes"]),
            str(s["background_bytes"]), str(s["move_critical_bytes"]),
        )
    console.print(t)

    speedup = base / latency["kv_hit"]["p50_ms"]
    result = {
        "device": args.device,
        "preset": args.preset,
        "pool_bytes": args.pool_bytes,
        "page_bytes": args.page_bytes,
        "requests_per_point": args.requests,
        "hit_rate_vs_alpha": curve,
        "latency_ms": latency,
        "alpha_sweep": sweep,
        "headline": {"kv_hit_speedup_vs_miss": speedup, "move_critical_bytes": sweep["move_critical_bytes"]},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(
        f"headline: KV-hit request p50 {speedup:.2f}x faster than a KV miss; "
        f"critical-path H2D bytes caused by {sweep['moved_pages']} moved pages: {sweep['move_critical_bytes']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
