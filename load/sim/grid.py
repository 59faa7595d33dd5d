"""The experiment grid of issue 8: routing policy x alpha controller x regime, and its report.

Plan, per regime:

1. Static sweep: every router policy at every alpha of `sweep_alphas`, on a
   `sweep_nodes`-node slice of the cluster at the same per-node load (the trace
   is scaled with the node count, so per-node rate, users and hot set match).
   Each router's best static alpha is its lowest-P99 alpha.
2. At `nodes`: every router with its best static alpha (`static_<router>`), the
   frozen PPO base policy alone with `helm` routing (`ppo`), the full
   three-layer controller with `helm` routing (`full`), and the routing
   ablation: the full controller behind `kv_aware` and `emb_aware` routing.

Runs are independent, so they go to a pool of forked workers that inherit the
pre-generated traces; each returns only its figures.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from helmrec.allocator.controller import Controller, ControllerConfig
from helmrec.allocator.interface import Decider, StaticAlpha
from helmrec.allocator.policy import Policy
from helmrec.load.sim.alpha_gap import alpha_gap
from helmrec.load.sim.cluster import simulate
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.metrics import measured, refused_share, summarize
from helmrec.load.sim.node_table import regime_trace
from helmrec.router.config import POLICIES as ROUTERS
from helmrec.workload.traces import REGIMES, Trace

ABLATION_ROUTERS = ("emb_aware", "kv_aware", "helm")
# Relative cost of one request under each router (32 backends): the EMB-sketch policies score every
# backend with a numpy call. Used only to start the longest runs first.
_ROUTER_COST = {"round_robin": 1.0, "least_loaded": 1.2, "kv_aware": 1.5, "emb_aware": 5.0, "helm": 6.0}


@dataclass(frozen=True)
class GridConfig:
    """The whole grid: the cluster run settings plus the sweep and the parallelism."""

    sim: SimConfig
    sweep_nodes: int
    sweep_alphas: tuple[float, ...]
    regimes: tuple[str, ...] = REGIMES
    workers: int = 1
    policy_path: str | None = None  # controller policy .npz (None: the packaged one)

    def __post_init__(self) -> None:
        if not 1 <= self.sweep_nodes <= self.sim.nodes:
            raise ValueError(f"GridConfig.sweep_nodes must be in 1..nodes ({self.sim.nodes}), got {self.sweep_nodes}")
        if not self.sweep_alphas or any(not 0.0 <= a <= 1.0 for a in self.sweep_alphas):
            raise ValueError(f"GridConfig.sweep_alphas must be a non-empty set of alphas in [0, 1], got {self.sweep_alphas}")
        unknown = set(self.regimes) - set(REGIMES)
        if not self.regimes or unknown:
            raise ValueError(f"GridConfig.regimes must be a non-empty subset of {REGIMES}, got {self.regimes}")
        if self.workers < 1:
            raise ValueError(f"GridConfig.workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class Task:
    """One simulated run: where (regime, node count), how routed, how alpha is set."""

    regime: str
    nodes: int
    router: str
    decider: str  # "static:<alpha>" or a controller layer set ("ppo", "full")
    gap: bool = False  # also measure |alpha - alpha*| (controller runs)

    @property
    def cost(self) -> float:
        return self.nodes * _ROUTER_COST[self.router]


@dataclass(frozen=True)
class TaskResult:
    task: Task
    figures: dict[str, float]  # summarize() keys
    refused: float
    wall_s: float
    alpha_gap: float | None = None
    # Per measured window (for plots): cluster P99, mean alpha and mean alpha* over nodes.
    t_s: np.ndarray | None = None
    p99_ms: np.ndarray | None = None
    alpha: np.ndarray | None = None
    alpha_star: np.ndarray | None = None


# Filled by the parent before the workers fork; a worker only reads it.
_TRACES: dict[tuple[str, int], Trace] = {}
_GRID: GridConfig | None = None
_POLICY: Policy | None = None


def _decider_factory(spec: str) -> Callable[[], Decider]:
    if spec.startswith("static:"):
        value = float(spec.split(":", 1)[1])
        return lambda: StaticAlpha(value)
    global _POLICY
    if _POLICY is None:
        _POLICY = Policy.load(_GRID.policy_path if _GRID is not None else None)
    policy = _POLICY
    config = ControllerConfig(layers=spec)
    return lambda: Controller(policy, config)


def run_task(task: Task) -> TaskResult:
    """Simulate one task on its pre-generated trace (runs in a worker)."""
    assert _GRID is not None, "run_grid sets the grid before running tasks"
    trace = _TRACES[(task.regime, task.nodes)]
    config = dataclasses.replace(_GRID.sim, nodes=task.nodes)
    result = simulate(trace, config, task.router, _decider_factory(task.decider))
    figures = summarize(result, trace, config)
    first = int(round(config.warmup_s / config.interval_s))
    w = config.windows
    rows = measured(trace, config)
    window = ((trace.t_s[rows] - config.warmup_s) // config.interval_s).astype(np.int64)
    lat = result.latency_ms[rows]
    p99 = np.full(w, np.nan)
    for k in range(w):
        served = lat[(window == k) & ~np.isnan(lat)]
        if served.size:
            p99[k] = np.percentile(served, 99)
    gap, star = alpha_gap(trace, result, config) if task.gap else (None, None)
    return TaskResult(
        task,
        figures,
        refused_share(result, trace, config),
        result.wall_s,
        alpha_gap=gap,
        t_s=config.warmup_s + config.interval_s * np.arange(w),
        p99_ms=p99,
        alpha=result.alpha[first : first + w].mean(axis=1),
        alpha_star=None if star is None else star.mean(axis=1),
    )


def _run_all(tasks: list[Task], workers: int, log: Callable[[str], None]) -> dict[Task, TaskResult]:
    tasks = sorted(tasks, key=lambda t: -t.cost)
    results: dict[Task, TaskResult] = {}
    if workers == 1 or len(tasks) == 1:
        outputs = map(run_task, tasks)
    else:
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(tasks)))
        outputs = pool.imap_unordered(run_task, tasks)
    try:
        for res in outputs:
            results[res.task] = res
            t = res.task
            log(
                f"  {t.regime:6s} {t.nodes:3d} nodes {t.router:12s} {t.decider:11s} "
                f"p99 {res.figures['p99_ms']:8.2f} ms  slo {res.figures['slo_satisfaction']:.4f}  "
                f"kv {res.figures['kv_hit']:.3f}  emb {res.figures['emb_hit']:.3f}  ({res.wall_s:.0f} s)"
            )
    finally:
        if workers > 1 and len(tasks) > 1:
            pool.close()
            pool.join()
    return results


def _best_alpha(sweep: dict[float, dict[str, float]]) -> float:
    """Lowest P99; higher SLO satisfaction breaks ties."""
    return min(sweep, key=lambda a: (round(sweep[a]["p99_ms"], 6), -sweep[a]["slo_satisfaction"]))


def _per_node(trace: Trace, nodes: int) -> dict[str, float]:
    """What one node's share of a trace is: the figures the report states."""
    cfg = trace.config
    return {
        "arrival_rate": cfg.arrival_rate / nodes,
        "users": cfg.num_users / nodes,
        "hot_users": cfg.hot_users / nodes,
        "hot_user_share": cfg.hot_user_share,
        "items": cfg.num_items - 1,
        "mean_history_len": cfg.mean_history_len,
        "max_history_len": cfg.max_history_len,
        "candidates": cfg.candidates,
    }


def run_grid(grid: GridConfig, log: Callable[[str], None] = print) -> tuple[dict, dict[str, dict[str, TaskResult]]]:
    """Run the grid; returns the report (the docs/reports.md shape) and the plot series."""
    global _GRID
    started = time.perf_counter()
    sim = grid.sim
    _GRID = grid
    _TRACES.clear()
    for regime in grid.regimes:
        for nodes in {grid.sweep_nodes, sim.nodes}:
            _TRACES[(regime, nodes)] = regime_trace(regime, nodes, sim)
    log(f"traces ready ({time.perf_counter() - started:.0f} s): " + ", ".join(
        f"{r}/{n} nodes {len(t):,} requests" for (r, n), t in _TRACES.items()))

    def static(alpha: float) -> str:
        return f"static:{alpha:g}"

    sweep_tasks = [
        Task(regime, grid.sweep_nodes, router, static(a))
        for regime in grid.regimes
        for router in ROUTERS
        for a in grid.sweep_alphas
    ]
    log(f"static sweep: {len(sweep_tasks)} runs at {grid.sweep_nodes} nodes")
    swept = _run_all(sweep_tasks, grid.workers, log)
    best = {
        (regime, router): _best_alpha(
            {a: swept[Task(regime, grid.sweep_nodes, router, static(a))].figures for a in grid.sweep_alphas}
        )
        for regime in grid.regimes
        for router in ROUTERS
    }

    main_tasks: list[Task] = []
    for regime in grid.regimes:
        if grid.sweep_nodes != sim.nodes:
            main_tasks += [Task(regime, sim.nodes, router, static(best[(regime, router)])) for router in ROUTERS]
        # alpha* replays every node's traffic at every alpha of a sweep (25 replays of the run): only the
        # headline run pays for it; the others report no gap.
        main_tasks += [Task(regime, sim.nodes, "helm", "ppo"), Task(regime, sim.nodes, "helm", "full", gap=True)]
        main_tasks += [Task(regime, sim.nodes, r, "full") for r in ABLATION_ROUTERS if r != "helm"]
    log(f"cluster runs: {len(main_tasks)} at {sim.nodes} nodes")
    ran = {**swept, **_run_all(main_tasks, grid.workers, log)}

    report: dict = {"nodes": sim.nodes, "regimes": {}}
    series: dict[str, dict[str, TaskResult]] = {}
    for regime in grid.regimes:
        statics = {router: ran[Task(regime, sim.nodes, router, static(best[(regime, router)]))] for router in ROUTERS}
        ppo = ran[Task(regime, sim.nodes, "helm", "ppo")]
        full = ran[Task(regime, sim.nodes, "helm", "full", gap=True)]
        ablation = {r: ran[Task(regime, sim.nodes, r, "full", gap=r == "helm")] for r in ABLATION_ROUTERS}
        policies = {f"static_{router}": res.figures for router, res in statics.items()}
        policies["ppo"] = ppo.figures
        policies["full"] = full.figures
        best_router = min(statics, key=lambda r: statics[r].figures["p99_ms"])
        best_p99 = statics[best_router].figures["p99_ms"]
        report["regimes"][regime] = {
            "p99_reduction_vs_best_static": 1.0 - full.figures["p99_ms"] / best_p99,
            "slo_satisfaction": full.figures["slo_satisfaction"],
            "alpha_gap": full.alpha_gap,
            "policies": policies,
            "best_static": {"policy": f"static_{best_router}", "alpha": best[(regime, best_router)]},
            "static_alpha": {router: best[(regime, router)] for router in ROUTERS},
            "ppo_alpha_gap": ppo.alpha_gap,
            "routing_ablation": {
                r: {
                    "emb_hit": res.figures["emb_hit"],
                    "kv_hit": res.figures["kv_hit"],
                    "p99_ms": res.figures["p99_ms"],
                    "slo_satisfaction": res.figures["slo_satisfaction"],
                    "alpha_gap": res.alpha_gap,
                }
                for r, res in ablation.items()
            },
            "sweep_p99_ms": {
                router: {f"{a:g}": swept[Task(regime, grid.sweep_nodes, router, static(a))].figures["p99_ms"]
                         for a in grid.sweep_alphas}
                for router in ROUTERS
            },
            "refused": {name: res.refused for name, res in {**{f"static_{r}": s for r, s in statics.items()},
                                                            "ppo": ppo, "full": full}.items()},
            "requests": len(_TRACES[(regime, sim.nodes)]),
        }
        series[regime] = {"full": full, "ppo": ppo, "best_static": statics[best_router]}
    report["run_time_s"] = time.perf_counter() - started
    report["config"] = {
        "nodes": sim.nodes,
        "sweep_nodes": grid.sweep_nodes,
        "sweep_alphas": list(grid.sweep_alphas),
        "duration_s": sim.duration_s,
        "warmup_s": sim.warmup_s,
        "interval_s": sim.interval_s,
        "pool_bytes": sim.node.pool_bytes,
        "page_bytes": sim.page_bytes,
        "refill_bytes_per_s": sim.refill_bytes_per_s,
        "max_in_flight": sim.max_in_flight,
        "slo_ms": sim.slo_ms,
        "seed": sim.seed,
        "workload": sim.workload,
        "cost_source": sim.node.cost.source,
        "trace_per_node": _per_node(_TRACES[(grid.regimes[0], sim.nodes)], sim.nodes),
        "burst_every_s": sim.burst_every_s,
        "burst_start_s": sim.burst_every_s / 2 if sim.burst_start_s is None else sim.burst_start_s,
        "burst_len_s": sim.burst_len_s,
        "workers": grid.workers,
    }
    return report, series
