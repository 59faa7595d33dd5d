"""Offline-optimal alpha*: the alpha that minimises a window's P99 in the node simulator.

alpha* is read off the 0.01 grid on which `build_table` evaluated every window
(a full sweep, not a local search, so a non-convex latency curve cannot trap
it), restricted to the node's [alpha_min, alpha_max]. Ties (flat stretches of
the curve) resolve to the grid point nearest the middle of the tied run, so a
flat optimum does not make alpha* jump between its ends from window to window.
Only evaluation and offline reward shaping read alpha*; no controller does.
"""

from __future__ import annotations

import numpy as np

from allocator.sim_env import ALPHA_GRID, NodeConfig, WindowTable

# P99 values within this relative distance of the minimum count as tied.
TIE_REL = 1e-3


def alpha_star(table: WindowTable, node: NodeConfig = NodeConfig()) -> np.ndarray:
    """alpha* of every window of `table` ([W] float64)."""
    allowed = (ALPHA_GRID >= node.alpha_min - 1e-9) & (ALPHA_GRID <= node.alpha_max + 1e-9)
    p99 = np.where(allowed[None, :], table.p99_ms, np.inf)
    best = p99.min(axis=1, keepdims=True)
    tied = p99 <= best * (1.0 + TIE_REL)
    idx = np.arange(ALPHA_GRID.shape[0])
    lo = np.where(tied, idx, ALPHA_GRID.shape[0]).min(axis=1)
    hi = np.where(tied, idx, -1).max(axis=1)
    argmin = p99.argmin(axis=1)
    # Middle of the tied run that contains the argmin (contiguous in practice; else the argmin).
    mid = (lo + hi) // 2
    contiguous = tied[np.arange(p99.shape[0]), mid]
    return ALPHA_GRID[np.where(contiguous, mid, argmin)]
