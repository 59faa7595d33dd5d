"""What every alpha controller is to the code that runs it: `decide(obs) -> alpha`.

The node's control loop (`helmrec.serving.node_control.NodeControl`), the
allocator's evaluation (`evaluate.replay`) and the cluster simulator
(`helmrec.load.sim.cluster.simulate`) call controllers only through this
protocol, so the three-layer `Controller`, the PID and the static baselines
are interchangeable in each of them.
"""

from __future__ import annotations

from typing import Protocol

from helmrec.allocator.observation import Observation


class Decider(Protocol):
    """Stateful: called once per control window, in window order, with the window that just ended."""

    def decide(self, obs: Observation) -> float:
        """The EMB share of the pool for the next window."""
        ...


class StaticAlpha:
    """The static baseline: the same alpha every window, whatever the window was."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def decide(self, obs: Observation) -> float:
        return self.alpha
