"""Placement, retry and refusal rules of the dispatcher, without sockets: the
`send` coroutine is where a front door would call the backend."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.dispatch import BackendFailure, Dispatcher, RouteFailure
from helmrec.router.request_features import Features
from helmrec.router.state import RouteRequest


def dispatcher(policy: str = "round_robin", max_in_flight: int = 4) -> Dispatcher:
    backends = tuple(BackendAddress("127.0.0.1", 9000 + i) for i in range(3))
    return Dispatcher(RouterConfig(backends=backends, policy=policy, max_in_flight_per_backend=max_in_flight))


def features(user: int = 1, sequence: int | None = None, end: bool = False) -> Features:
    route = RouteRequest(user_id=user, history_len=5, candidates=np.arange(4, dtype=np.int64))
    return Features(route, None if sequence is None else ("m", sequence), end)


def test_a_backend_failing_before_answering_is_retried_once_then_unavailable() -> None:
    d = dispatcher()
    tried: list[int] = []

    async def first_fails(index: int) -> str:
        tried.append(index)
        if len(tried) == 1:
            raise BackendFailure("connection reset")
        return f"answer from {index}"

    assert asyncio.run(d.dispatch(features(), first_fails)) == f"answer from {tried[1]}"
    assert tried[0] != tried[1] and not d.backends[tried[0]].healthy and d.stats.retries == 1

    async def always_fails(index: int) -> str:
        raise BackendFailure("connection refused")

    with pytest.raises(RouteFailure) as info:
        asyncio.run(d.dispatch(features(), always_fails))
    assert info.value.code == "UNAVAILABLE" and "the retry's backend failed too" in info.value.message
    assert all(b.in_flight == 0 for b in d.backends)  # every placement was released


def test_sequences_stick_until_their_end_and_fail_loudly_when_their_backend_cannot_serve() -> None:
    d = dispatcher(max_in_flight=1)

    async def ok(index: int) -> int:
        return index

    home = asyncio.run(d.dispatch(features(user=1, sequence=5), ok))
    assert {asyncio.run(d.dispatch(features(user=u, sequence=5), ok)) for u in range(2, 6)} == {home}
    d.backends[home].in_flight = 1
    with pytest.raises(RouteFailure) as full:
        asyncio.run(d.dispatch(features(sequence=5), ok))
    assert full.value.code == "RESOURCE_EXHAUSTED" and "sequence 5" in full.value.message
    d.backends[home].in_flight = 0
    d.mark_down(home)
    with pytest.raises(RouteFailure) as down:
        asyncio.run(d.dispatch(features(sequence=5), ok))
    assert down.value.code == "UNAVAILABLE" and "sequence 5 lives on backend" in down.value.message
    d.backends[home].mark_up()
    asyncio.run(d.dispatch(features(sequence=5, end=True), ok))  # the end forgets the sequence
    d.backends[home].in_flight = 1
    assert asyncio.run(d.dispatch(features(sequence=5), ok)) != home  # a new sequence 5 goes anywhere


def test_a_sequence_is_not_retried_elsewhere_its_state_was_on_the_dead_backend() -> None:
    d = dispatcher()

    async def fails(index: int) -> int:
        raise BackendFailure("reset")

    with pytest.raises(RouteFailure) as info:
        asyncio.run(d.dispatch(features(sequence=9), fails))
    assert info.value.code == "UNAVAILABLE" and "its sequence state was there" in info.value.message
    assert d.stats.retries == 0


def test_record_predicts_kv_hits_for_repeat_users() -> None:
    d = dispatcher("helm")

    async def ok(index: int) -> int:
        return index

    for _ in range(3):
        asyncio.run(d.dispatch(features(user=7), ok))
    assert d.stats.with_user == 3 and d.stats.predicted_kv_hits == 2
