"""`python -m helmrec.allocator.bound`: how close to alpha* can a controller that sees a given signal get?

The full controller's gap to alpha* was about 0.02 from the first eight
observation fields and is 0.015-0.017 with the measured counterfactual KV hit
rates (docs/allocator.md). To tell a weak policy from a weak signal, this fits the best memoryless
predictor we can train offline —
an MLP regressing the next window's alpha* with an L1 loss, trained on the
training seeds and scored on the held-out seeds of `eval-allocator` — from
four signal sets, all recorded along the PPO controller's own trajectory
(so a row says what a controller on that trajectory could add, not what a
controller with less to see would reach: its trajectory would differ):

- observation: all `Observation` fields, scaled as the policy sees them;
- observation+past: plus the 3 previous observations (a frame stack);
- observation+workload: plus what the node could count about its traffic over
  the simulator's 10 s lookback: the share of requests whose user came back
  within 0.5 ... 64 s (the reuse-time CDF that sets KV hit rates under Che's
  approximation), history-length P50/P90/P99 and the request count;
- observation+p99 slope: plus the window's P99 at alpha +/- 0.1 read from
  the simulator's cost model. No node measures that; it shows what a
  measured latency slope could still add.

A predictor with the same inputs as the policy that cannot beat the policy
says the remaining gap lives in alpha* itself, not in training.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from helmrec.allocator.controller import Controller, ControllerConfig
from helmrec.allocator.evaluate import EVAL_SEEDS, replay
from helmrec.allocator.node_model import NodeConfig, WindowTable, build_table
from helmrec.allocator.observation import COUNTERFACTUAL_SHARE, features
from helmrec.allocator.oracle import alpha_star
from helmrec.allocator.policy import Policy
from helmrec.allocator.train import TRAIN_SEEDS
from helmrec.workload.traces import REGIMES, Trace, make_trace

REUSE_TAUS_S = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
STACK = 3


def _past(obs: np.ndarray, trace: Trace, table: WindowTable, alphas: np.ndarray, node: NodeConfig) -> np.ndarray:
    return np.concatenate([obs] + [np.concatenate([np.repeat(obs[:1], k, 0), obs[:-k]]) for k in range(1, STACK + 1)], 1)


def _workload(obs: np.ndarray, trace: Trace, table: WindowTable, alphas: np.ndarray, node: NodeConfig) -> np.ndarray:
    rows = []
    for t0 in table.t0_s[: obs.shape[0]]:
        t1 = t0 + node.interval_s
        lb = trace.window(t1 - node.lookback_s, t1)
        reuse = trace.since_prev_s[lb]
        lengths = trace.history_len[lb].astype(np.float64)
        cdf = (reuse[None, :] <= REUSE_TAUS_S[:, None]).mean(axis=1) if reuse.size else np.zeros(REUSE_TAUS_S.size)
        pct = np.percentile(lengths, [50, 90, 99]) if lengths.size else np.zeros(3)
        rows.append(np.concatenate([2 * cdf - 1, pct / 2000 - 1, [np.log1p(reuse.size) - 7]]))
    return np.concatenate([obs, np.asarray(rows)], 1)


def _p99_slope(obs: np.ndarray, trace: Trace, table: WindowTable, alphas: np.ndarray, node: NodeConfig) -> np.ndarray:
    rows = []
    for w, alpha in enumerate(alphas):
        p99 = table.at(w, alpha)[3]
        up, down = table.at(w, alpha + COUNTERFACTUAL_SHARE)[3], table.at(w, alpha - COUNTERFACTUAL_SHARE)[3]
        rows.append([(up - down) / max(p99, 1e-3)])
    return np.concatenate([obs, np.asarray(rows)], 1)


SIGNALS: dict[str, Callable[..., np.ndarray] | None] = {
    "observation": None,
    "observation+past": _past,
    "observation+workload": _workload,
    "observation+p99 slope": _p99_slope,
}


def dataset(
    regime: str, seed: int, duration_s: float, policy: Policy, node: NodeConfig
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs of every signal set, and the targets alpha*(w + 1), along the PPO controller's trajectory."""
    trace = make_trace(regime, seed, duration_s=duration_s)
    table = build_table(trace, node)
    star = alpha_star(table, node)
    # Observation i describes window i, lived at the alpha in force then (start 0.5, then the decisions).
    decided, _, seen = replay(table, Controller(policy, ControllerConfig(layers="ppo")))
    lived = np.concatenate([[0.5], decided[:-1]])
    obs = np.stack([features(o) for o in seen]).astype(np.float64)
    inputs = {name: obs if signal is None else signal(obs, trace, table, lived, node) for name, signal in SIGNALS.items()}
    return inputs, star[1:]


def fit_gap(
    train: list[tuple[np.ndarray, np.ndarray]], test: dict[str, list[tuple[np.ndarray, np.ndarray]]], epochs: int, seed: int
) -> dict[str, float]:
    """Held-out mean |prediction - alpha*| per regime of a 2x64 tanh MLP fitted with L1 loss (full batch, Adam)."""
    import torch

    torch.manual_seed(seed)
    x = torch.tensor(np.concatenate([a for a, _ in train]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([b for _, b in train]), dtype=torch.float32)[:, None]
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = (net(x) - y).abs().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return {
            regime: float(np.mean([np.abs(net(torch.tensor(a, dtype=torch.float32))[:, 0].numpy() - b).mean() for a, b in pairs]))
            for regime, pairs in test.items()
        }


def bound(
    duration_s: float,
    train_seeds: tuple[int, ...],
    test_seeds: tuple[int, ...],
    epochs: int,
    policy: Policy,
    node: NodeConfig = NodeConfig(),
) -> dict[str, dict[str, float]]:
    """{signal set: {regime: held-out gap}}."""
    train = {name: [] for name in SIGNALS}
    test: dict[str, dict[str, list]] = {name: {r: [] for r in REGIMES} for name in SIGNALS}
    for regime in REGIMES:
        for seed in train_seeds + test_seeds:
            inputs, target = dataset(regime, seed, duration_s, policy, node)
            for name, x in inputs.items():
                (train[name] if seed in train_seeds else test[name][regime]).append((x, target))
    return {name: fit_gap(train[name], test[name], epochs, seed=0) for name in SIGNALS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of each trace")
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = bound(args.duration, TRAIN_SEEDS, EVAL_SEEDS, args.epochs, Policy.load())
    print(f"{'signal':28s}" + "".join(f"{r + ' gap':>13s}" for r in REGIMES))
    for name, gaps in report.items():
        print(f"{name:28s}" + "".join(f"{gaps[r]:13.4f}" for r in REGIMES))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
