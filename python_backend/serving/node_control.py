"""The node's control loop inside `hstu_pool`: pool stats -> metrics, observation -> alpha.

Every control interval one thread reads the pool's read-and-reset stats
window, pushes it to the Triton metrics families, turns it into the
controller's `Observation`, asks the controller for the next alpha and hands
it to the pool. Nothing here runs on a request's critical path: requests only
append their service time to `ServiceTimes`. The controller is any
`helmrec.allocator.interface.Decider` (None: a static node, metrics only); a
step that fails ends the loop and is kept in `error` for `hstu_pool` to answer
with, rather than leaving alpha stuck without a word.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from helmrec.allocator.interface import Decider
from helmrec.allocator.observation import KVLookback, Observation
from helmrec.pool.stats import PoolStats

# Utilisation is capped below 1 so the queue estimate stays finite when the node saturates.
MAX_UTILISATION = 0.99


class ServiceTimes:
    """Service times of the requests of the current window (appended on the request path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms: list[float] = []

    def record(self, ms: float) -> None:
        with self._lock:
            self._ms.append(ms)

    def drain(self) -> np.ndarray:
        with self._lock:
            out, self._ms = np.asarray(self._ms, dtype=np.float64), []
        return out


def observe(stats: PoolStats, service_ms: np.ndarray, kv_rates: tuple[float, float, float]) -> Observation:
    """The controller's observation of one window; `kv_rates` are the KV hit rates
    (hit, with more KV, with less) over the trailing lookback (`KVLookback`).

    The Python backend does not see Triton's queue, so queue depth is the
    M/M/1 mean queue length rho^2 / (1 - rho) at the window's measured
    utilisation rho (busy time / window length): zero when idle, growing
    sharply as the node saturates — the signal the controller needs.
    """
    window_s = max(stats.window_s, 1e-9)
    rho = min(float(service_ms.sum()) / 1e3 / window_s, MAX_UTILISATION)
    return Observation(
        emb_hit_rate=stats.emb_hit_rate,
        kv_hit_rate=kv_rates[0],
        hot_user_share=stats.hot_user_share,
        mean_history_len=stats.mean_history_len,
        request_rate=stats.request_rate,
        queue_depth=rho * rho / (1.0 - rho),
        alpha=min(max(stats.alpha, 0.0), 1.0),
        p99_ms=float(np.percentile(service_ms, 99)) if service_ms.size else 0.0,
        kv_hit_rate_more=kv_rates[1],
        kv_hit_rate_less=kv_rates[2],
    )


class NodeControl:
    """Runs the control loop on its own thread until `stop()`."""

    def __init__(
        self,
        read_stats: Callable[[], PoolStats],
        set_alpha: Callable[[float], None],
        publish: Callable[[PoolStats, float | None], None],
        service_times: ServiceTimes,
        controller: Decider | None,
        interval_s: float,
    ) -> None:
        self._read_stats = read_stats
        self._set_alpha = set_alpha
        self._publish = publish
        self._service_times = service_times
        self._controller = controller
        self._interval_s = interval_s
        self._kv_lookback = KVLookback()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helmrec-node-control", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def step(self) -> None:
        """One control interval's work (also what the thread runs)."""
        stats = self._read_stats()
        service_ms = self._service_times.drain()
        kv_rates = self._kv_lookback.add(stats.window_s, stats.kv_requests, stats.kv_hits, stats.kv_hits_more, stats.kv_hits_less)
        decision_us = None
        if self._controller is not None and stats.requests:
            obs = observe(stats, service_ms, kv_rates)
            t0 = time.perf_counter()
            alpha = self._controller.decide(obs)
            decision_us = (time.perf_counter() - t0) * 1e6
            self._set_alpha(alpha)
        self._publish(stats, decision_us)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval_s):
                self.step()
        except BaseException as exc:  # surfaced by hstu_pool on the next request, never swallowed
            self.error = exc
