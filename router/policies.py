"""Routing policies: pure, synchronous choices of a backend for a request.

A policy sees a `RouteRequest` and the list of `BackendState`s and returns the
index of the backend to use. It never touches sockets or clocks, so the cluster
simulator reuses these classes unchanged. The caller owns the backend state:
after `choose` it calls `backend.admit(request)` and `policy.on_placed(...)`,
after the answer `backend.release()` and `policy.on_done(...)`.

Baselines: `round_robin`, `least_loaded`, `kv_aware` (the user's rendezvous
home, where its prefix is), `emb_aware` (go where the candidates are hot).
`helm` keeps the user home and guards against overrunning a hot node. `kv_aware`
and `helm` decide from what every router replica shares (user id, backend
addresses, health, scraped queues), so replicas agree without talking.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from helmrec.router.rendezvous import home_order
from helmrec.router.state import BackendState, RouteRequest


class RoutingError(Exception):
    """No backend can take the request now."""


class NoHealthyBackend(RoutingError):
    """Every backend is down: the caller answers UNAVAILABLE."""


class AllBackendsBusy(RoutingError):
    """Every healthy backend is at its in-flight limit: the caller answers RESOURCE_EXHAUSTED."""


class RoutingPolicy(Protocol):
    name: str

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int: ...

    def on_placed(self, request: RouteRequest, index: int, backends: Sequence[BackendState]) -> None: ...

    def on_done(self, request: RouteRequest, index: int, ok: bool, backends: Sequence[BackendState]) -> None: ...


def backends_with_room(backends: Sequence[BackendState]) -> list[int]:
    """Indices of healthy backends below their in-flight limit; raises if there are none."""
    room = [i for i, b in enumerate(backends) if b.has_room]
    if room:
        return room
    healthy = sum(b.healthy for b in backends)
    if healthy == 0:
        raise NoHealthyBackend(f"no healthy backend (all {len(backends)} are down)")
    limit = max(b.max_in_flight for b in backends if b.healthy)
    raise AllBackendsBusy(
        f"router overloaded: all {healthy} healthy backends have {limit} requests in flight (the per-backend limit)"
    )


class _Policy:
    """Shared tie-breaking: equal scores rotate, so a cold start spreads users evenly."""

    name = ""
    # Whether `choose` reads the request's candidates (the EMB sketch): when no
    # policy does, the router neither reads them from the request nor feeds the sketch.
    reads_candidates = False

    def __init__(self) -> None:
        self._cursor = 0

    def _rotated(self, indices: list[int], n: int) -> list[int]:
        """`indices` (ascending) starting at this call's cursor, wrapping around."""
        start = self._cursor % n
        self._cursor += 1
        k = bisect_left(indices, start)
        return indices[k:] + indices[:k]

    def _best(self, indices: list[int], n: int, score: Callable[[int], object]) -> int:
        """Highest score; among equals, the first in this call's rotation."""
        return max(self._rotated(indices, n), key=score)

    def on_placed(self, request: RouteRequest, index: int, backends: Sequence[BackendState]) -> None:
        """Policies here keep no per-placement state beyond the backends' own."""

    def on_done(self, request: RouteRequest, index: int, ok: bool, backends: Sequence[BackendState]) -> None:
        """Policies here keep no per-answer state beyond the backends' own."""


class RoundRobin(_Policy):
    """Each backend in turn, skipping ones that are down or full."""

    name = "round_robin"

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        return self._rotated(backends_with_room(backends), len(backends))[0]


class LeastLoaded(_Policy):
    """The backend with the fewest requests in flight (or queued, if it reports more)."""

    name = "least_loaded"

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        return self._best(backends_with_room(backends), len(backends), lambda i: -backends[i].load)


class KVAware(_Policy):
    """The user's rendezvous home; its next choice only when the home is down or full.

    Every replica computes the same home (see `rendezvous`), so a user's prefix
    stays on one backend however many routers share the traffic. No load guard:
    a popular user's node takes all of that user's traffic, which is exactly the
    weakness `helm` fixes.
    """

    name = "kv_aware"

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        room = backends_with_room(backends)
        if request.user_id is None:
            return self._best(room, len(backends), lambda i: -backends[i].load)
        return next(i for i in home_order(request.user_id, [b.name for b in backends]) if backends[i].has_room)


class EMBAware(_Policy):
    """Where the largest share of the request's candidates is hot; least loaded among equals."""

    name = "emb_aware"
    reads_candidates = True

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        room = backends_with_room(backends)
        shares = {i: backends[i].emb.hot_share(request.item_slots) for i in room}
        return self._best(room, len(backends), lambda i: (shares[i], -backends[i].load))


@dataclass(frozen=True)
class LoadGuard:
    """How far a user's home may run ahead of the least-loaded backend before `helm` spills.

    A backend with more than `slack` requests above the least-loaded backend
    with room is skipped for the user's next rendezvous choice. Load is the
    larger of the backend's own queue report (scraped by every replica, so the
    same everywhere, but as old as the last scrape) and this router's requests
    in flight there times `replicas`: with traffic dealt evenly over R routers
    each sees about 1/R of a backend's in-flight requests, and without the
    factor the guard would trip only at R times the imbalance (in the cluster
    simulator, 3 replicas without it: P99 16 ms against one router's 3 ms).
    """

    slack: int = 4
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.slack < 0:
            raise ValueError(f"LoadGuard.slack must be >= 0, got {self.slack}")
        if self.replicas < 1:
            raise ValueError(f"LoadGuard.replicas must be >= 1, got {self.replicas}")

    def load(self, backend: BackendState) -> float:
        """The backend's requests as every replica together would count them."""
        return max(float(backend.in_flight * self.replicas), backend.queue_depth)


class Helm(_Policy):
    """The user's rendezvous home, guarded: a home overrun spills to the user's next choice.

    Decisions read only what every replica shares: the user id, the backend
    addresses, health, and the backends' reported queues (plus this router's
    in-flight count, which only matters once a home is already overrun). So N
    replicas that never talk keep each user's prefix on one backend, and a
    spill lands on the same second choice in all of them. A backend that
    restarts gets its own users back at once (their prefixes are gone
    everywhere else too: they were only ever on it) and its share of new ones.
    """

    name = "helm"

    def __init__(self, guard: LoadGuard = LoadGuard()) -> None:
        super().__init__()
        self.guard = guard

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        room = backends_with_room(backends)
        if request.user_id is None:
            return self._best(room, len(backends), lambda i: -backends[i].load)
        load = self.guard.load
        ceiling = min(load(backends[i]) for i in room) + self.guard.slack
        order = home_order(request.user_id, [b.name for b in backends])
        return next(i for i in order if backends[i].has_room and load(backends[i]) <= ceiling)


POLICY_CLASSES: dict[str, type[_Policy]] = {
    cls.name: cls for cls in (RoundRobin, LeastLoaded, KVAware, EMBAware, Helm)
}


def make_policy(name: str, replicas: int = 1) -> RoutingPolicy:
    """A fresh policy object by its CLI name, for one of `replicas` routers sharing the traffic evenly."""
    if name == Helm.name:
        return Helm(LoadGuard(replicas=replicas))
    try:
        return POLICY_CLASSES[name]()
    except KeyError:
        raise ValueError(f"policy {name!r}: expected one of {', '.join(POLICY_CLASSES)}") from None
