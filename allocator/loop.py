"""The control loop thread that runs a controller against a live pool.

The serving glue (`hstu_pool`) owns the pool; it hands this loop two
callables — `observe()` returns the last window's `Observation` (a stats
snapshot read-and-reset by the pool), `set_alpha(a)` asks the pool to move its
split — so the controller never sees pool internals and the pool never sees
the controller's. Decision latency (decide() only, not observe/set_alpha) is
recorded in a preallocated ring for the `helmrec_controller_decision_us` gauge.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

import numpy as np

from helmrec.allocator.observation import Observation

log = logging.getLogger(__name__)


class Decider(Protocol):
    """Anything with `decide(obs) -> alpha`: the Controller, or the PID and static baselines."""

    def decide(self, obs: Observation) -> float: ...


class ControlLoop:
    """Call `observe -> controller.decide -> set_alpha` every `interval_s` on a daemon thread."""

    def __init__(
        self,
        controller: Decider,
        observe: Callable[[], Observation],
        set_alpha: Callable[[float], None],
        interval_s: float = 0.1,
        history: int = 4096,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"ControlLoop.interval_s must be > 0, got {interval_s}")
        if history < 1:
            raise ValueError(f"ControlLoop.history must be >= 1, got {history}")
        self.controller = controller
        self.observe = observe
        self.set_alpha = set_alpha
        self.interval_s = interval_s
        self._decision_us = np.zeros(history)
        self.decisions = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.last_alpha: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ControlLoop":
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("ControlLoop already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="helmrec-alpha-control", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> "ControlLoop":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tick(self) -> float:
        """One control step (what the thread runs each interval); returns the alpha set."""
        obs = self.observe()
        t0 = time.perf_counter_ns()
        alpha = float(self.controller.decide(obs))
        self._decision_us[self.decisions % self._decision_us.shape[0]] = (time.perf_counter_ns() - t0) / 1e3
        self.decisions += 1
        self.set_alpha(alpha)
        self.last_alpha = alpha
        return alpha

    def decision_latency_us(self) -> dict[str, float]:
        """Median and P99 decision latency over the recorded ring (zeros before the first decision)."""
        n = min(self.decisions, self._decision_us.shape[0])
        if n == 0:
            return {"median": 0.0, "p99": 0.0}
        ring = self._decision_us[:n]
        return {"median": float(np.median(ring)), "p99": float(np.percentile(ring, 99))}

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a bad stats snapshot must not kill control for good
                self.errors += 1
                self.last_error = exc
                log.exception("alpha control step failed; keeping the current alpha")
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))
