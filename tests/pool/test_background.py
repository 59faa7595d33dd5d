"""The pool's background thread and refill throttle."""

import threading

import pytest

from helmrec.pool.background import BackgroundWorker, RefillThrottle


def test_throttle_grants_bandwidth_times_time_up_to_its_burst():
    throttle = RefillThrottle(bytes_per_s=1000.0, min_burst_bytes=10)
    assert throttle.grant(0.01) == 10
    throttle.spend(4)
    assert throttle.grant(0.0) == 6
    assert throttle.grant(10.0) == 50  # capped at 50 ms worth
    with pytest.raises(ValueError, match="elapsed_s must be >= 0"):
        throttle.grant(-1.0)


def test_throttle_always_fits_one_row():
    assert RefillThrottle(bytes_per_s=1.0, min_burst_bytes=256).grant(1000.0) == 256


def test_worker_steps_until_closed():
    calls = []
    ticked = threading.Event()

    def step(elapsed_s: float) -> None:
        calls.append(elapsed_s)
        if len(calls) >= 3:
            ticked.set()

    worker = BackgroundWorker(step, interval_s=0.001)
    assert ticked.wait(5.0)
    worker.close()
    assert not worker.alive and worker.error is None
    assert all(e >= 0 for e in calls)


def test_worker_stops_and_reports_the_first_failure():
    def step(elapsed_s: float) -> None:
        raise OSError("host table unreadable")

    worker = BackgroundWorker(step, interval_s=0.001)
    for _ in range(500):
        if not worker.alive:
            break
        threading.Event().wait(0.01)
    assert isinstance(worker.error, OSError) and not worker.alive
    worker.close()
