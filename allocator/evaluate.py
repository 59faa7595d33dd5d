"""Alpha controllers against the offline-optimal alpha* on held-out window tables.

`helmrec eval-allocator` (`helmrec.load.sim.eval_allocator`) replays the cluster
simulator's node on every regime of the held-out seeds into window tables and
calls `evaluate` here. For every table, the controllers step through the trace one
control window at a time; each policy sees only the Observation of the window
that just ended and sets alpha for the next one. Reported per regime and
policy: `gap` = mean |alpha - alpha*| over windows, and `p99_ms` = the
request-weighted mean of the windows' P99 latency. The full controller's
decision latency is timed over 100k decide() calls on recorded observations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from helmrec.allocator.controller import Controller, ControllerConfig
from helmrec.allocator.interface import Decider, StaticAlpha
from helmrec.allocator.node_model import NodeConfig, NodeState, WindowTable, step_node
from helmrec.allocator.observation import Observation
from helmrec.allocator.oracle import alpha_star
from helmrec.allocator.pid import PIDConfig, PIDController
from helmrec.allocator.policy import Policy

EVAL_SEEDS = (100, 101)
# The node's floor and a step above it, then every tenth: on the measured H200 node the best split
# gives nearly all of the pool to KV.
STATIC = (0.02, 0.05, *(round(0.1 * k, 1) for k in range(1, 10)))
DECISION_CALLS = 100_000


def policies(policy: Policy) -> dict[str, Callable[[], Decider]]:
    """Fresh-instance factories of every compared policy (controllers are stateful)."""
    out: dict[str, Callable[[], Decider]] = {f"static_{a}": (lambda a=a: StaticAlpha(a)) for a in STATIC}
    if "meta_pid_setpoint" not in policy.extra:
        raise ValueError("policy file has no meta_pid_setpoint: re-export it with helmrec train-allocator")
    setpoint = float(policy.extra["meta_pid_setpoint"])
    out["pid"] = lambda: PIDController(PIDConfig(setpoint=setpoint))
    for layers in ("ppo", "ppo_residual", "full"):
        out[layers] = lambda layers=layers: Controller(policy, ControllerConfig(layers=layers))
    return out


def replay(
    table: WindowTable, decider: Decider, start_alpha: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[Observation]]:
    """Alphas chosen for windows 1..W-1, their P99 (ms) and the observations the decider saw.

    The KV hit rates are counted over the lookback's requests (`NodeState.rng`, seeded by `seed`),
    as a node observes them, not the simulator's expectations.
    """
    state = NodeState(alpha=start_alpha, rng=np.random.default_rng(seed))
    obs = step_node(table, 0, state)
    alphas, p99, seen = [], [], []
    for w in range(1, table.num_windows):
        seen.append(obs)
        state.alpha = float(decider.decide(obs))
        obs = step_node(table, w, state)
        alphas.append(state.alpha)
        p99.append(obs.p99_ms)
    return np.array(alphas), np.array(p99), seen


def decision_latency_us(controller: Controller, observations: list[Observation], calls: int = DECISION_CALLS) -> dict[str, float]:
    """Median and P99 of single decide() calls (perf_counter_ns around each call)."""
    samples = np.empty(calls)
    n = len(observations)
    clock = time.perf_counter_ns
    for i in range(calls):
        obs = observations[i % n]
        t0 = clock()
        controller.decide(obs)
        samples[i] = clock() - t0
    return {"median": float(np.median(samples)) / 1e3, "p99": float(np.percentile(samples, 99)) / 1e3}


def evaluate(
    policy: Policy, tables: dict[str, list[WindowTable]], node: NodeConfig = NodeConfig(), plot: Path | None = None
) -> dict:
    """The report of docs/reports.md for `policy` on the held-out `tables` of each regime."""
    factories = policies(policy)
    report: dict = {"regimes": {}}
    traces_for_plot: dict[str, dict[str, np.ndarray]] = {}
    recorded: list[Observation] = []
    for regime, regime_tables in tables.items():
        gaps: dict[str, list[float]] = {name: [] for name in factories}
        lat: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in factories}
        for k, table in enumerate(regime_tables):
            star = alpha_star(table, node)[1:]
            weights = table.requests[1:].astype(np.float64)
            for name, make in factories.items():
                alphas, p99, seen = replay(table, make())
                gaps[name].append(float(np.abs(alphas - star).mean()))
                lat[name].append((p99, weights))
                if k == 0 and name in ("full", "ppo"):
                    traces_for_plot.setdefault(regime, {"t": table.t0_s[1:], "star": star})[name] = alphas
                    if name == "full":
                        recorded.extend(seen)
        report["regimes"][regime] = {
            "gap": {name: float(np.mean(v)) for name, v in gaps.items()},
            "p99_ms": {
                name: float(np.sum([np.sum(p * w) for p, w in v]) / np.sum([np.sum(w) for _, w in v]))
                for name, v in lat.items()
            },
        }
    report["decision_latency_us"] = decision_latency_us(Controller(policy, ControllerConfig()), recorded)
    if plot is not None:
        plot_alpha(traces_for_plot, plot)
    return report


def plot_alpha(series: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """alpha* and the chosen alphas over time, one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.6 * len(series)), sharex=True)
    for ax, (regime, s) in zip(np.atleast_1d(axes), series.items()):
        ax.plot(s["t"], s["star"], color="black", lw=1.0, label="alpha* (oracle)")
        ax.plot(s["t"], s["ppo"], color="tab:orange", lw=0.8, alpha=0.8, label="ppo")
        ax.plot(s["t"], s["full"], color="tab:blue", lw=1.0, label="full")
        ax.set_ylabel(f"{regime}\nalpha")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(loc="upper right", ncol=3, fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("trace time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: dict) -> str:
    """Gap / P99 per policy and regime; the last line is the headline."""
    names = list(next(iter(report["regimes"].values()))["gap"])
    head = f"{'policy':14s}" + "".join(f"{r + ' gap':>12s}{r + ' p99ms':>14s}" for r in report["regimes"])
    lines = [head]
    for name in names:
        row = f"{name:14s}"
        for r in report["regimes"].values():
            row += f"{r['gap'][name]:12.4f}{r['p99_ms'][name]:14.3f}"
        lines.append(row)
    d = report["decision_latency_us"]
    worst = max(r["gap"]["full"] for r in report["regimes"].values())
    lines.append(f"full controller: worst-regime gap {worst:.4f}; decide() median {d['median']:.2f} us, p99 {d['p99']:.2f} us")
    return "\n".join(lines)
