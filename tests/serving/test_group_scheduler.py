"""GroupScheduler: requests that wait are served together, every request is answered once
(a result or the error of its group), and the queue holds back instead of growing."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from helmrec.serving.group_scheduler import GroupScheduler


class Answers:
    def __init__(self) -> None:
        self.got: dict[int, object] = {}
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)

    def answer(self, key: int):
        def call(result: object) -> None:
            with self.lock:
                assert key not in self.got, f"request {key} answered twice"
                self.got[key] = result
                self.done.notify_all()

        return call

    def wait(self, count: int) -> None:
        with self.lock:
            assert self.done.wait_for(lambda: len(self.got) >= count, timeout=10), self.got


def test_requests_waiting_behind_a_group_are_served_as_the_next_group() -> None:
    release = threading.Event()
    groups: list[list[int]] = []

    def serve(items: Sequence[int]) -> list[int]:
        groups.append(list(items))
        if len(groups) == 1:
            release.wait(10)
        return [2 * i for i in items]

    answers = Answers()
    scheduler = GroupScheduler(serve, max_group=4, max_waiting=16)
    scheduler.submit(0, answers.answer(0))
    while not groups:  # the first group holds the thread
        threading.Event().wait(0.001)
    for i in range(1, 7):
        scheduler.submit(i, answers.answer(i))
    release.set()
    answers.wait(7)
    scheduler.close()
    assert groups == [[0], [1, 2, 3, 4], [5, 6]]
    assert answers.got == {i: 2 * i for i in range(7)}


def test_a_failing_group_errs_every_request_of_it_and_the_next_group_is_served() -> None:
    def serve(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("GPU fell over")
        return list(items)

    answers = Answers()
    scheduler = GroupScheduler(serve, max_group=1, max_waiting=4)
    for i in (13, 14):
        scheduler.submit(i, answers.answer(i))
    answers.wait(2)
    scheduler.close()
    assert isinstance(answers.got[13], RuntimeError) and answers.got[14] == 14


def test_a_serve_that_drops_results_fails_loudly_instead_of_leaving_requests_unanswered() -> None:
    answers = Answers()
    scheduler = GroupScheduler(lambda items: list(items)[:-1], max_group=8, max_waiting=8)
    scheduler.submit(1, answers.answer(1))
    answers.wait(1)
    scheduler.close()
    assert isinstance(answers.got[1], RuntimeError) and "0 results for 1" in str(answers.got[1])


def test_close_serves_what_is_queued_and_refuses_more() -> None:
    gate = threading.Event()

    def serve(items: Sequence[int]) -> list[int]:
        gate.wait(10)
        return list(items)

    answers = Answers()
    scheduler = GroupScheduler(serve, max_group=2, max_waiting=8)
    for i in range(5):
        scheduler.submit(i, answers.answer(i))
    gate.set()
    scheduler.close()
    assert sorted(answers.got) == list(range(5))
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(9, answers.answer(9))


def test_a_full_queue_blocks_the_submitter() -> None:
    gate = threading.Event()
    scheduler = GroupScheduler(lambda items: (gate.wait(10), list(items))[1], max_group=1, max_waiting=2)
    answers = Answers()
    for i in range(3):  # one in service, two waiting: the queue is full
        scheduler.submit(i, answers.answer(i))
    blocked = threading.Thread(target=scheduler.submit, args=(3, answers.answer(3)))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "submit must wait while max_waiting requests are queued"
    gate.set()
    blocked.join(10)
    scheduler.close()
    assert sorted(answers.got) == [0, 1, 2, 3]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_group"):
        GroupScheduler(lambda items: list(items), max_group=8, max_waiting=4)
