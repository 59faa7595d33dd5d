"""The pool's background thread and the throttle on its H2D traffic.

Admission, refill and alpha moves all run here, never inside a request. The
throttle is a token bucket over `refill_bandwidth_bytes_per_s`: the refill
may use that share of the host-to-device link and no more, so the copies a
request waits for (its own misses) always find bandwidth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# A quiet throttle may save up this much time's worth of bandwidth: enough for
# one sizeable batch after an idle spell, small enough that a burst of refill
# cannot hog the link for long.
_BURST_S = 0.05


class RefillThrottle:
    """Token bucket: `grant(elapsed)` adds bandwidth * elapsed, `spend(n)` takes n bytes."""

    def __init__(self, bytes_per_s: float, min_burst_bytes: int) -> None:
        self.bytes_per_s = bytes_per_s
        # At least one row must fit, or a slow link could never copy anything.
        self.capacity = max(bytes_per_s * _BURST_S, float(min_burst_bytes))
        self._tokens = 0.0

    def grant(self, elapsed_s: float) -> int:
        if elapsed_s < 0:
            raise ValueError(f"elapsed_s must be >= 0, got {elapsed_s}")
        self._tokens = min(self.capacity, self._tokens + self.bytes_per_s * elapsed_s)
        return int(self._tokens)

    def spend(self, nbytes: int) -> None:
        self._tokens = max(0.0, self._tokens - nbytes)


class BackgroundWorker:
    """Calls `step(elapsed_s)` every `interval_s` on a daemon thread until `close()`."""

    def __init__(self, step: Callable[[float], None], interval_s: float, name: str = "helmrec-pool") -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._step = step
        self._interval = interval_s
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            try:
                self._step(now - last)
            except BaseException as exc:  # keep serving: requests stay correct without admission
                self.error = exc
                log.exception("pool background step failed; admission, refill and moves are stopped")
                return
            last = now
