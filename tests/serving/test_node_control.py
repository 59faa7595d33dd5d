"""NodeControl, the node's one control loop: a decision per window with requests, on its own thread."""

from __future__ import annotations

import threading
import time

import numpy as np

from helmrec.allocator.controller import Controller
from helmrec.launcher.repository import control_window_s
from helmrec.pool.stats import PoolStats
from helmrec.resources import default_policy, model_repository
from helmrec.serving.node_control import NodeControl, ServiceTimes


def window(alpha: float = 0.5, requests: int = 20) -> PoolStats:
    return PoolStats(
        window_s=0.1, requests=requests, history_len_sum=50 * requests, hot_user_requests=requests // 4,
        emb_lookups=400, emb_hits=300, kv_requests=requests, kv_hits=requests // 2, kv_partial_hits=0,
        kv_hits_more=requests // 2 + requests // 5, kv_hits_less=requests // 4, kv_tokens=1000, kv_hit_tokens=600,
        emb_evictions=0, kv_evictions=0, emb_pages=10, kv_pages=10, kv_cached_users=7, h2d_critical_bytes=0,
        h2d_background_bytes=0, alpha=alpha, target_alpha=alpha,
    )


class Node:
    """The pool side of the loop: each window reports the alpha the last decision set."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.alpha = 0.5
        self.windows = 0
        self.fail_at = fail_at
        self.applied: list[float] = []
        self.published: list[float | None] = []
        self.lock = threading.Lock()

    def read_stats(self) -> PoolStats:
        with self.lock:
            self.windows += 1
            if self.windows == self.fail_at:
                raise RuntimeError("stats snapshot unavailable")
            return window(self.alpha, requests=0 if self.windows % 4 == 0 else 20)

    def set_alpha(self, alpha: float) -> None:
        self.alpha = alpha
        self.applied.append(alpha)

    def publish(self, stats: PoolStats, decision_us: float | None) -> None:
        self.published.append(decision_us)

    def control(self, controller: Controller | None, interval_s: float = 1.0) -> NodeControl:
        times = ServiceTimes()
        for _ in range(20):
            times.record(2.5)
        return NodeControl(self.read_stats, self.set_alpha, self.publish, times, controller, interval_s)


def test_a_window_with_requests_gets_a_decision_and_its_latency() -> None:
    node = Node()
    controller = Controller.load()
    control = node.control(controller)
    for _ in range(8):
        control.step()
    assert len(node.applied) == 6  # windows 4 and 8 had no requests: nothing to decide on
    assert all(controller.policy.alpha_min <= a <= controller.policy.alpha_max for a in node.applied)
    assert [d is None for d in node.published] == [False, False, False, True] * 2
    assert all(0.0 < d < 1e5 for d in node.published if d is not None)


def test_a_static_node_publishes_its_windows_and_never_moves_alpha() -> None:
    node = Node()
    control = node.control(None)
    for _ in range(3):
        control.step()
    assert node.applied == [] and node.published == [None] * 3


def test_the_thread_runs_until_stop() -> None:
    node = Node()
    control = node.control(Controller.load(), interval_s=0.002)
    control.start()
    deadline = time.monotonic() + 10.0
    while len(node.published) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    control.stop()
    n = len(node.published)
    time.sleep(0.05)
    assert n >= 20 and len(node.published) == n, "stop() must end the thread"
    assert control.error is None


def test_a_failed_step_stops_the_loop_and_is_kept_for_hstu_pool() -> None:
    node = Node(fail_at=5)
    control = node.control(Controller.load(), interval_s=0.002)
    control.start()
    deadline = time.monotonic() + 10.0
    while control.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert isinstance(control.error, RuntimeError) and len(node.published) == 4
    control.stop()


def test_the_packaged_node_observes_over_the_window_the_policy_was_trained_on() -> None:
    """hot_user_share and the hit rates depend on the window's length: hstu_pool's control window
    must be the simulator window that policy.npz records, or the policy reads a different workload."""
    with np.load(default_policy()) as policy:
        trained_s = float(policy["meta_interval_s"])
    assert control_window_s(model_repository()) == trained_s
