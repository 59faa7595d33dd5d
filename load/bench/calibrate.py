"""Measure a node's per-request costs through `PooledRanker` and write a cost table.

    helmrec calibrate --device cuda --preset large --out h200.json          # ~3-5 min on an H200
    helmrec calibrate --device cpu --preset large --num-items 100000 --out allocator/costs/cpu.json
    helmrec calibrate --device cpu --preset tiny --quick --out /tmp/cpu.json  # seconds (tests)

The simulators model a node by `CostModel`; this tool grounds it in the path
`hstu_pool` serves. Every request is a `RankRequest` through `PooledRanker.rank_many`
(validation, pool lookup, CUDA-graph replays where they apply, commit), in groups of
1 and more, by kind:

- `hit`: a returning user with the same history (full KV hit: rank only);
- `extend`: a returning user with k new events (the cached prefix is extended by k tokens);
- `prefill`: a new user (the whole history is computed);

by history length n and candidate count c. Requests draw their items from a hot set
the EMB cache holds (admitted before the clock starts, checked by the pool's own
counters), so compute is measured apart from EMB misses; a missed row's cost is
measured on its own, by the pool's critical-path copy (`HostTable.fetch_critical`)
out of a host table of production size (on cuda 2^26 rows, 64 GiB pinned: the
model's own item table cannot be that large, since the graphs need it on the GPU and
`HostTable` would copy it to the host twice), and a hit row by the pool's gather out
of its EMB pages (`EmbCache.gather`). A served-path check (KV hits whose candidates
all miss against the same with all hitting) compares with it. Each cell runs once
untimed first, so no graph capture or first-call allocation lands in a timing; the
pool's counters must show the kind intended (a KV hit was a hit), or the run stops.

The fit (`helmrec.allocator.calibrate`) turns the cells into `CostModel`'s constants
and a batching curve per kind; the table (`helmrec.allocator.cost_table`) keeps both
with the raw timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helmrec.allocator import calibrate, cost_table
from helmrec.fastpath.paged_extend import PagedExtend
from helmrec.hstu.config import HSTUConfig, preset
from helmrec.hstu.model import HSTU
from helmrec.pool.config import PoolConfig
from helmrec.pool.host_table import HostTable
from helmrec.pool.kv_cache import HistoryTokens
from helmrec.pool.pool import LookupQuery
from helmrec.pool.ranker import PooledRanker, RankRequest
from helmrec.pool.stats import PoolStats
from helmrec.serving.network import serving_dtype

# A returning user with more new events than this runs the eager extend on a GPU (see
# fastpath/paged_extend.py); such cells are measured and kept, but not fitted, since one
# prefill_fixed cannot be both a graph launch and ~100 eager launches.
EXTEND_GRAPH_MAX_NEW = inspect.signature(PagedExtend).parameters["max_new"].default


@dataclass(frozen=True)
class Grid:
    """What one run measures, and the pool it measures in."""

    histories: tuple[int, ...]
    candidates: tuple[int, ...]
    extend_new: tuple[int, ...]  # k of the `extend` cells alone
    groups: tuple[int, ...]  # group sizes; 1 first
    batched_extend_new: tuple[int, ...]  # k of the `extend` cells in groups
    repeats: int  # timed repetitions of a cell alone
    group_repeats: int  # timed repetitions of a cell in groups
    gather_rows: tuple[int, ...]  # row counts of the EMB gather timings
    host_table_rows: int  # rows of the host table of the miss gather; 0: the ranker's own item table
    pool_bytes: int
    page_bytes: int
    alpha: float  # EMB share: enough for the hot items, the rest KV
    hot_items: int  # ids 1 .. hot_items - 1 are the hot set every timed request draws from

    def check(self, cfg: HSTUConfig) -> None:
        """SystemExit naming the field when the preset cannot serve this grid."""
        if max(self.histories) > cfg.max_seq_len:
            raise SystemExit(f"--histories: {max(self.histories)} exceeds the preset's max_seq_len {cfg.max_seq_len}")
        if max(self.candidates) > cfg.max_candidates:
            raise SystemExit(f"--candidates: {max(self.candidates)} exceeds the preset's max_candidates {cfg.max_candidates}")
        if not 2 <= self.hot_items < cfg.num_items:
            raise SystemExit(f"hot items {self.hot_items} must lie in [2, num_items {cfg.num_items}): cold ids must remain")
        if self.groups[0] != 1:
            raise SystemExit(f"groups must start with 1 (the reference of the batching factors), got {self.groups}")


GiB = 1 << 30
GRIDS: dict[tuple[str, bool], Grid] = {
    # DLRMv3-like histories up to 14k and MLPerf's 2048 candidates; 64 GiB pinned host table.
    ("cuda", False): Grid((512, 2048, 4096, 8192, 14000), (256, 2048), (1, 16, 256), (1, 8, 32), (1, 16), 7, 3,
                          (1024, 8192, 65536), 1 << 26, 24 * GiB, 1 << 20, 0.02, 65536),
    ("cuda", True): Grid((512, 2048), (256,), (1, 16), (1, 8), (16,), 3, 2, (1024, 8192), 0, 8 * GiB, 1 << 20, 0.02, 16384),
    # Two CPU cores: short histories, few candidates; the committed cpu.json.
    ("cpu", False): Grid((32, 128, 384), (16, 64), (1, 16), (1, 8, 32), (1, 16), 7, 2, (256, 1024, 4096), 0,
                         512 << 20, 1 << 20, 0.1, 4096),
    ("cpu", True): Grid((16, 48), (8, 32), (1, 4), (1, 4), (4,), 5, 3, (256, 2048), 0, 4 << 20, 4096, 0.2, 200),
}  # fmt: skip


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Users:
    """Requests of the calibration's users: fixed histories over the hot items, fresh user ids on demand.

    A user's history is a pure function of (user, position), so a returning user's longer
    history has the shorter one as its exact prefix: the pool reuses it."""

    def __init__(self, cfg: HSTUConfig, hot_items: int, seed: int = 0) -> None:
        self.cfg = cfg
        self.hot = hot_items
        self.rng = np.random.default_rng(seed)
        self._next = 1

    def new(self) -> int:
        self._next += 1
        return self._next

    def request(self, user: int, n: int, c: int, cold: bool = False) -> RankRequest:
        pos = np.arange(n, dtype=np.int64)
        ids = 1 + (user * 7919 + pos * 104729) % (self.hot - 1)
        ts = 1_700_000_000 + pos * 60
        actions = (user + pos) % self.cfg.num_actions
        low, high = (self.hot, self.cfg.num_items) if cold else (1, self.hot)
        cands = self.rng.integers(low, high, c, dtype=np.int64)
        return RankRequest(user, *map(torch.from_numpy, (ids, ts, actions, cands)), int(ts[-1]) + 60)


def _serve(ranker: PooledRanker, requests: Sequence[RankRequest]) -> None:
    """`rank_many`, with a refused request an error here (rank_many returns it instead)."""
    for result in ranker.rank_many(requests):
        if isinstance(result, ValueError):
            raise result


def _syncer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _expect(stats: PoolStats, kind: str, n: int, k: int, group: int, where: str) -> None:
    """The pool's counters of one timed group must show the kind the cell means to measure."""
    want = {"hit": (group, 0, group * n), "extend": (group, group, group * (n - k)), "prefill": (0, 0, 0)}[kind]
    got = (stats.kv_hits, stats.kv_partial_hits, stats.kv_hit_tokens)
    if got != want:
        raise RuntimeError(
            f"{where}: the pool saw (KV hits, partial hits, reused tokens) {got}, a {kind} needs {want}; "
            "the KV side of the pool is too small for this grid (raise pool_bytes or lower alpha)"
        )


def measure_cell(ranker: PooledRanker, users: Users, kind: str, n: int, c: int, k: int, group: int, repeats: int,
                 sync: Callable[[], None], graphs: bool) -> dict:  # fmt: skip
    """One cell: `group` requests of `kind` served by one `rank_many`, timed `repeats` times after one
    untimed round. Returns the cell as the table stores it (per-request microseconds)."""
    where = f"{kind} n={n} c={c} k={k} group={group}"
    samples, hit_rows, miss_rows = [], [], []
    returning = [users.new() for _ in range(group)]
    if kind == "hit":
        _serve(ranker, [users.request(u, n, c) for u in returning])  # the KV every repetition then hits
    for rep in range(repeats + 1):
        if kind == "extend":
            returning = [users.new() for _ in range(group)]
            _serve(ranker, [users.request(u, n - k, c) for u in returning])  # the prefix they return with
        who = [users.new() for _ in range(group)] if kind == "prefill" else returning
        requests = [users.request(u, n, c) for u in who]
        sync()
        ranker.stats()  # opens this group's window
        t0 = time.perf_counter()
        _serve(ranker, requests)
        sync()
        elapsed = time.perf_counter() - t0
        stats = ranker.stats()
        _expect(stats, kind, n, k, group, where)
        if rep:
            samples.append(elapsed * 1e6 / group)
            hit_rows.append(stats.emb_hits / group)
            miss_rows.append((stats.emb_lookups - stats.emb_hits) / group)
    eager = kind == "extend" and (not graphs or k > EXTEND_GRAPH_MAX_NEW)
    cell = {
        "kind": kind, "history": n, "candidates": c, "new_tokens": k, "group": group,
        "us_per_request": statistics.median(samples), "samples_us": [round(s, 1) for s in samples],
        "emb_hit_rows": float(np.mean(hit_rows)), "emb_miss_rows": float(np.mean(miss_rows)),
        "path": "graphed" if graphs and not eager else "eager", "fit": group == 1 and not (graphs and eager),
    }  # fmt: skip
    _log(f"{where}: {cell['us_per_request']:.0f} us/request ({cell['path']}, EMB miss rows {cell['emb_miss_rows']:.0f})")
    return cell


def admit_hot_items(ranker: PooledRanker, users: Users, n: int, c: int) -> None:
    """Look up every hot item once (histories of n tokens that enumerate them), then let the
    background rounds admit them; afterwards every timed request's rows hit the EMB cache."""
    hot = users.hot
    for lo in range(0, hot, n):
        ids = 1 + (np.arange(lo, lo + n, dtype=np.int64) % (hot - 1))
        ts = 1_700_000_000 + np.arange(n, dtype=np.int64) * 60
        cands = users.rng.integers(1, hot, c, dtype=np.int64)
        request = RankRequest(users.new(), torch.from_numpy(ids), torch.from_numpy(ts), torch.zeros(n, dtype=torch.int64),
                              torch.from_numpy(cands), int(ts[-1]) + 60)  # fmt: skip
        _serve(ranker, [request])
    for _ in range(1000):
        ranker.step_background(1.0)
        if ranker.stats().h2d_background_bytes == 0:
            break
    probe = users.request(users.new(), n, c)
    _serve(ranker, [probe])
    stats = ranker.stats()
    if stats.emb_hits != stats.emb_lookups:
        raise RuntimeError(
            f"EMB holds {stats.emb_hits} of {stats.emb_lookups} hot rows after admission; raise alpha or pool_bytes"
        )


def request_overhead(ranker: PooledRanker, users: Users, n: int, c: int, repeats: int, sync: Callable[[], None]) -> dict:
    """The pool's per-request bookkeeping on the request path, without the network: validation,
    `Pool.lookup_many` and `Pool.commit_many` of one KV hit at the smallest shape. This is the
    Python-side cost every request pays whatever its size; grouping amortises much of it."""
    user = users.new()
    request = users.request(user, n, c)
    _serve(ranker, [request])
    pool, samples = ranker.pool, []
    for rep in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        valid = request.validated(ranker.limits)
        ids, cands = torch.from_numpy(valid.hist_ids), torch.from_numpy(valid.cand_ids)
        tokens = HistoryTokens(ids, torch.from_numpy(valid.hist_ts), torch.from_numpy(valid.hist_actions))
        found = pool.lookup_many([LookupQuery(valid.user_id, tokens, ids, cands)])[0]
        pool.commit_many([(valid.user_id, tokens, found, found.prefix_kv)])
        sync()
        if rep:
            samples.append((time.perf_counter() - t0) * 1e6)
    ranker.stats()
    return {"us": statistics.median(samples), "samples_us": [round(s, 1) for s in samples], "history": n, "candidates": c}


def _gather_points(gather: Callable[[np.ndarray], object], ids_of: Callable[[int], np.ndarray], rows: Sequence[int],
                   repeats: int, sync: Callable[[], None]) -> dict:  # fmt: skip
    """Median time of gathering r rows (fresh ids each time) at each r, and the fitted per-row cost."""
    points = []
    for r in rows:
        samples = []
        for rep in range(repeats + 1):
            ids = ids_of(r)
            sync()
            t0 = time.perf_counter()
            gather(ids)
            sync()
            if rep:
                samples.append((time.perf_counter() - t0) * 1e6)
        points.append({"rows": r, "us": statistics.median(samples), "samples_us": [round(s, 1) for s in samples]})
    fixed, per_row = calibrate.row_cost([p["rows"] for p in points], [p["us"] for p in points])
    return {"points": points, "fixed_us": fixed, "row_us": per_row}


def miss_gather(host: HostTable, source: str, grid: Grid, rng: np.random.Generator, sync: Callable[[], None]) -> dict:
    """The pool's critical-path copy of missed rows (`HostTable.fetch_critical`, waited for) of random ids."""
    points = _gather_points(
        lambda ids: host.fetch_critical(torch.from_numpy(ids)).wait(),
        lambda r: rng.integers(0, host.num_items, r, dtype=np.int64),
        grid.gather_rows, grid.repeats, sync,
    )  # fmt: skip
    return {"source": source, "table_rows": host.num_items, **points}


def host_table_for_misses(rows: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[HostTable, str]:
    """A pinned host table of `rows` rows for the miss gather, halving on an allocation failure.

    `torch.empty(pin_memory=True)`: no values are drawn (randn of 2^35 elements would take
    minutes), and pinned pages are resident, so every gathered row is a real DRAM read."""
    while True:
        try:
            t0 = time.perf_counter()
            table = torch.empty((rows, width), dtype=dtype, pin_memory=device.type == "cuda")
            host = HostTable(table, device)
            if host.table.data_ptr() != table.data_ptr():  # not a RuntimeError: halving would not help
                raise ValueError("HostTable copied the pinned table instead of using it")
            note = f"HostTable over a {rows}-row pinned table ({rows * width * table.element_size() / GiB:.1f} GiB), "
            note += f"allocated in {time.perf_counter() - t0:.1f} s; not the ranker's item table"
            return host, note
        except RuntimeError as exc:
            if rows <= 1 << 20:
                raise
            _log(f"host table of {rows} rows failed ({str(exc).splitlines()[0]}); halving")
            rows //= 2


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def build_model(cfg: HSTUConfig, device: torch.device, dtype: torch.dtype) -> HSTU:
    """Seeded random weights of the preset: costs depend on shapes, not on trained values."""
    torch.manual_seed(0)
    with torch.device(device):
        model = HSTU(cfg)
    return model.eval().to(dtype)


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    device = torch.device(args.device)
    dtype = serving_dtype("auto", device)
    cfg = preset(args.preset)
    if args.num_items is not None:
        cfg = dataclasses.replace(cfg, num_items=args.num_items)
    grid = GRIDS[(device.type, args.quick)]
    overrides = {"histories": args.histories, "candidates": args.candidates, "host_table_rows": args.host_table_rows}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    grid = dataclasses.replace(grid, **overrides)
    grid.check(cfg)
    if device.type == "cpu":
        # One thread: on a shared CPU, two OpenMP threads wait on each other whenever one is
        # descheduled, and timings then swing by 10x; one thread's cost is reproducible (per core).
        torch.set_num_threads(1)
    sync = _syncer(device)
    rng = np.random.default_rng(1)
    elem = torch.empty((), dtype=dtype).element_size()
    raw: dict = {}
    _log(f"calibrate on {device_name(device)}: preset {args.preset} ({cfg.num_items} items), {dtype}, grid {grid}")

    with torch.inference_mode():
        if grid.host_table_rows:  # first: a host that cannot pin it fails in seconds, not after the grid
            host, note = host_table_for_misses(grid.host_table_rows, cfg.d_model, dtype, device)
            _log(note)
            raw["emb_miss_gather"] = miss_gather(host, note, grid, rng, sync)
            del host

    model = build_model(cfg, device, dtype)
    config = PoolConfig(grid.pool_bytes, grid.page_bytes, grid.alpha, 1e10, 64, device=str(device))
    with PooledRanker(model, config, background_interval_s=None, graph_max_batch=max(grid.groups)) as ranker:
        warm_s = ranker.warm([(n, c) for n in grid.histories for c in grid.candidates])
        graphs = ranker.graph_buffer_bytes > 0
        _log(f"graphs {'captured' if graphs else 'not used (eager path)'} in {warm_s:.1f} s")
        users = Users(cfg, grid.hot_items)
        admit_hot_items(ranker, users, max(grid.histories), min(grid.candidates))
        _log(f"hot set of {grid.hot_items} items admitted to EMB")
        with torch.inference_mode():
            if not grid.host_table_rows:
                own = ranker.pool.host_table
                raw["emb_miss_gather"] = miss_gather(own, f"the ranker's own HostTable ({own.num_items} rows)", grid, rng, sync)
            emb = ranker.pool.emb_cache
            hot_slots = lambda r: emb.lookup(rng.integers(1, grid.hot_items, r, dtype=np.int64))
            raw["emb_hit_gather"] = {
                "source": "EmbCache.gather of resident hot rows (the pool's EMB pages)",
                **_gather_points(emb.gather, hot_slots, grid.gather_rows, grid.repeats, sync),
            }
        if emb.lookup(np.arange(1, grid.hot_items)).min() < 0:
            raise RuntimeError("a hot row left the EMB cache during the gather timing")
        _log(f"EMB row: miss {raw['emb_miss_gather']['row_us']:.4f} us, hit {raw['emb_hit_gather']['row_us']:.4f} us")
        raw["request_overhead"] = request_overhead(ranker, users, min(grid.histories), min(grid.candidates), grid.repeats, sync)
        _log(f"request overhead {raw['request_overhead']['us']:.0f} us")

        cells, failed = [], []
        for n in grid.histories:
            for c in grid.candidates:
                alone = [("hit", 0, 1), *(("extend", k, 1) for k in grid.extend_new if k < n), ("prefill", n, 1)]
                batched = [("hit", 0), *(("extend", k) for k in grid.batched_extend_new if k < n), ("prefill", n)]
                for kind, k, group in alone + [(kind, k, g) for g in grid.groups[1:] for kind, k in batched]:
                    repeats = grid.repeats if group == 1 else grid.group_repeats
                    try:
                        cells.append(measure_cell(ranker, users, kind, n, c, k, group, repeats, sync, graphs))
                    except torch.OutOfMemoryError as exc:  # one shape too big must not cost the whole run
                        failed.append({"kind": kind, "history": n, "candidates": c, "new_tokens": k, "group": group,
                                       "error": str(exc).splitlines()[0]})  # fmt: skip
                        _log(f"{kind} n={n} c={c} k={k} group={group}: out of memory, skipped")
                        torch.cuda.empty_cache()
        raw["requests"], raw["failed_cells"] = cells, failed
        raw["emb_check"] = served_emb_check(ranker, users, min(grid.histories), max(grid.candidates), grid.repeats, sync)

    table = {
        "schema_version": cost_table.SCHEMA_VERSION,
        "device": device_name(device),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "preset": args.preset,
        "dtype": str(dtype).removeprefix("torch."),
        "num_items": cfg.num_items,
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "graphs": graphs,
        "warm_s": warm_s,
        "grid": dataclasses.asdict(grid),
        "raw": raw,
        # The sizes are the preset's; refit adds the fitted times, the batching curves and the fit's residuals.
        "constants": {"emb_row_bytes": cfg.d_model * elem, "kv_token_bytes": cfg.num_layers * cfg.kv_width * elem},
    }
    table = calibrate.refit(table)
    table["elapsed_s"] = time.perf_counter() - t_start
    return table


def served_emb_check(ranker: PooledRanker, users: Users, n: int, c: int, repeats: int, sync: Callable[[], None]) -> dict:
    """KV hits whose c candidates all miss the EMB cache against the same with all hitting: the
    per-row difference as the served path pays it (lookup, host gather, H2D, scatter), to set
    beside the gather timings the constants come from."""
    user = users.new()
    _serve(ranker, [users.request(user, n, c)])
    out = {}
    for cold in (False, True):
        samples, misses = [], []
        for rep in range(repeats + 1):
            request = users.request(user, n, c, cold=cold)
            ranker.stats()
            sync()
            t0 = time.perf_counter()
            _serve(ranker, [request])
            sync()
            elapsed = time.perf_counter() - t0
            stats = ranker.stats()
            if rep:
                samples.append(elapsed * 1e6)
                misses.append(stats.emb_lookups - stats.emb_hits)
        out["cold" if cold else "hot"] = {"us": statistics.median(samples), "miss_rows": float(np.mean(misses))}
    rows = out["cold"]["miss_rows"] - out["hot"]["miss_rows"]
    out["miss_minus_hit_row_us"] = (out["cold"]["us"] - out["hot"]["us"]) / rows if rows > 0 else None
    out.update(history=n, candidates=c)
    _log(f"served EMB check at n={n} c={c}: cold {out['cold']['us']:.0f} us, hot {out['hot']['us']:.0f} us")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="large", help="HSTU preset (python_backend/hstu/config.py)")
    parser.add_argument("--num-items", type=int, help="item table rows instead of the preset's (e.g. a lighter CPU run)")
    parser.add_argument("--out", type=Path, required=True, help="the cost table (JSON) to write")
    parser.add_argument("--quick", action="store_true", help="a small grid: seconds on a CPU (tests, smoke runs)")
    parser.add_argument("--histories", type=int, nargs="+", help="history lengths instead of the grid's")
    parser.add_argument("--candidates", type=int, nargs="+", help="candidate counts instead of the grid's")
    parser.add_argument("--host-table-rows", type=int, help="rows of the miss-gather host table (0: the ranker's own)")
    args = parser.parse_args(argv)
    table = run(args)
    table["command"] = " ".join(["helmrec calibrate", *(sys.argv[1:] if argv is None else argv)])
    cost_table.write(table, args.out)
    constants = table["constants"]
    _log(f"wrote {args.out} in {table['elapsed_s']:.0f} s")
    for key, value in constants.items():
        print(f"  {key:26s} {value:.4f}" if isinstance(value, float) else f"  {key:26s} {value}")
    for kind, curve in table["batch_efficiency"].items():
        print(f"  batch_efficiency {kind:8s} {curve}")
    for kind, summary in table["fit"]["residuals"].items():
        print(f"  fit {kind:20s} {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
