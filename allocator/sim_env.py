"""The gymnasium wrapper of the node model, PPO's training env (`helmrec train-allocator`).

`NodeEnv` replays windows of precomputed `node_model.WindowTable`s, so a PPO
step costs microseconds and training over all three regimes takes minutes on
a CPU. Only training imports this module (and with it gymnasium); the node
model itself, the oracle and the evaluation do not.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from helmrec.allocator.action import alpha_from_action
from helmrec.allocator.node_model import NodeConfig, NodeState, WindowTable, step_node
from helmrec.allocator.observation import OBS_DIM, features
from helmrec.allocator.oracle import alpha_star


class NodeEnv(gym.Env):
    """Gymnasium env over precomputed window tables; one step = one control interval.

    Action: the next alpha as a number in [-1, 1] (mapped onto [alpha_min, alpha_max]).
    Observation: `observation.features(obs)`, the scaled floats the policy reads.
    Reward: minus the latency regret of the chosen alpha against the window's optimum, in units of
    the optimum's P99, minus `gap_weight` x |alpha - alpha*|. The gap term shapes the reward toward
    the oracle offline only; at run time the policy sees nothing but the observation.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        tables: list[WindowTable],
        node: NodeConfig = NodeConfig(),
        episode_windows: int = 128,
        gap_weight: float = 10.0,
    ) -> None:
        if not tables:
            raise ValueError("NodeEnv needs at least one WindowTable")
        if episode_windows < 2 or any(t.num_windows <= episode_windows for t in tables):
            raise ValueError(f"NodeEnv.episode_windows ({episode_windows}) must be >= 2 and < every table's windows")
        self.tables = tables
        self.node = node
        self.episode_windows = episode_windows
        self.gap_weight = gap_weight
        self.alpha_star = [alpha_star(t, node) for t in tables]
        self.best_p99 = [t.p99_ms.min(axis=1) for t in tables]
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)
        self._table = 0
        self._w = 0
        self._end = 0
        self._state = NodeState(alpha=0.5)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._table = int(self.np_random.integers(len(self.tables)))
        table = self.tables[self._table]
        self._w = int(self.np_random.integers(0, table.num_windows - self.episode_windows))
        self._end = self._w + self.episode_windows
        self._state = NodeState(alpha=float(self.np_random.uniform(self.node.alpha_min, self.node.alpha_max)), rng=self.np_random)
        obs = step_node(table, self._w, self._state)
        self._w += 1
        return features(obs), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        table = self.tables[self._table]
        w = self._w
        self._state.alpha = alpha_from_action(float(np.asarray(action).reshape(-1)[0]), self.node.alpha_min, self.node.alpha_max)
        obs = step_node(table, w, self._state)
        star = float(self.alpha_star[self._table][w])
        best = float(self.best_p99[self._table][w])
        regret = (table.at(w, self._state.alpha)[3] - best) / max(best, 1e-6)
        reward = -regret - self.gap_weight * abs(self._state.alpha - star)
        self._w += 1
        truncated = self._w >= self._end
        info = {"alpha": self._state.alpha, "alpha_star": star, "p99_ms": obs.p99_ms}
        return features(obs), float(reward), False, truncated, info
