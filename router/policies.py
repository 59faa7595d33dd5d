"""Routing policies: pure, synchronous choices of a backend for a request.

A policy sees a `RouteRequest` and the list of `BackendState`s and returns the
index of the backend to use. It never touches sockets or clocks, so the cluster
simulator reuses these classes unchanged. The caller owns the backend state:
after `choose` it calls `backend.admit(request)` and `policy.on_placed(...)`,
after the answer `backend.release()` and `policy.on_done(...)`.

Baselines: `round_robin`, `least_loaded`, `kv_aware` (go where the user's prefix
is), `emb_aware` (go where the candidates are hot). `helm` scores all three
signals jointly and guards against overrunning a hot node.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

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
    """Where the longest prefix of the user's history is resident; least loaded otherwise.

    No load guard: a popular user's node takes all of that user's traffic, which
    is exactly the weakness `helm` fixes.
    """

    name = "kv_aware"

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        room = backends_with_room(backends)
        if request.user_id is None:
            return self._best(room, len(backends), lambda i: -backends[i].load)
        user, n = request.user_id, request.history_len
        return self._best(room, len(backends), lambda i: (backends[i].kv.cached_len(user, n), -backends[i].load))


class EMBAware(_Policy):
    """Where the largest share of the request's candidates is hot; least loaded among equals."""

    name = "emb_aware"

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        room = backends_with_room(backends)
        shares = {i: backends[i].emb.hot_share(request.item_slots) for i in room}
        return self._best(room, len(backends), lambda i: (shares[i], -backends[i].load))


@dataclass(frozen=True)
class HelmWeights:
    """How `helm` trades the three signals.

    Score = kv * (share of the history resident) + emb * (share of candidates hot)
            - load * (requests above the least-loaded backend) / (guard_slack + 1)
            + homes * (share by which the backend's users fall short of the mean),
    the last term only for a request whose user has a prefix nowhere (a new user).
    With these defaults a resident prefix outweighs up to `guard_slack` extra
    queued requests, and the guard then forbids the node outright, so a hot
    user's node is never overrun; EMB locality decides among nodes without the
    user's prefix (new users) and breaks near-ties.

    The homes term is load over a longer horizon than requests in flight: the
    users homed on a backend bring their next requests there. A backend that
    restarts has none (its record is cleared: its caches are gone) and a cold
    EMB sketch; with homes > emb its empty home count outweighs the others' hot
    candidates, so new users flow to it until it holds 1 - emb/homes (20%) of
    the mean, by which time its sketch has warmed on their candidates. In a
    balanced cluster the shortfalls are a few percent and EMB locality decides.
    """

    kv: float = 1.0
    emb: float = 0.4
    load: float = 0.5
    homes: float = 0.5
    # A backend with more than this many requests above the least-loaded
    # eligible backend is skipped, whatever its cache score.
    guard_slack: int = 4

    def __post_init__(self) -> None:
        for name in ("kv", "emb", "load", "homes"):
            if getattr(self, name) < 0:
                raise ValueError(f"HelmWeights.{name} must be >= 0, got {getattr(self, name)}")
        if self.guard_slack < 0:
            raise ValueError(f"HelmWeights.guard_slack must be >= 0, got {self.guard_slack}")


class Helm(_Policy):
    """Joint KV residency + EMB locality + load score with a load guard."""

    name = "helm"

    def __init__(self, weights: HelmWeights = HelmWeights()) -> None:
        super().__init__()
        self.weights = weights

    def choose(self, request: RouteRequest, backends: Sequence[BackendState]) -> int:
        w = self.weights
        room = backends_with_room(backends)
        loads = {i: backends[i].load for i in room}
        floor = min(loads.values())
        user, n = request.user_id, request.history_len
        # KV, load and homes terms first (dictionary lookups); the EMB term (a numpy
        # gather) can add at most w.emb, so it is only computed for backends
        # within w.emb of the best partial score: usually just the user's home.
        eligible = [i for i, load in loads.items() if load - floor <= w.guard_slack]
        kv = {i: backends[i].kv.fraction(user, n) if user is not None else 0.0 for i in eligible}
        homes = self._home_shortfall(eligible, backends) if w.homes and not any(kv.values()) else {}
        partial = {
            i: w.kv * kv[i] - w.load * (loads[i] - floor) / (w.guard_slack + 1) + w.homes * homes.get(i, 0.0)
            for i in eligible
        }
        cut = max(partial.values()) - w.emb
        slots = request.item_slots
        score = {
            i: s + w.emb * backends[i].emb.hot_share(slots) if w.emb and s >= cut else s for i, s in partial.items()
        }
        return self._best(list(score), len(backends), score.__getitem__)

    @staticmethod
    def _home_shortfall(eligible: list[int], backends: Sequence[BackendState]) -> dict[int, float]:
        """Per backend, the share (0..1) by which its homed users fall short of the eligible mean."""
        counts = {i: len(backends[i].kv) for i in eligible}
        mean = sum(counts.values()) / len(counts)
        if mean == 0:
            return {}
        return {i: max(0.0, 1.0 - c / mean) for i, c in counts.items()}


POLICY_CLASSES: dict[str, type[_Policy]] = {
    cls.name: cls for cls in (RoundRobin, LeastLoaded, KVAware, EMBAware, Helm)
}


def make_policy(name: str) -> RoutingPolicy:
    """A fresh policy object by its CLI name."""
    try:
        return POLICY_CLASSES[name]()
    except KeyError:
        raise ValueError(f"policy {name!r}: expected one of {', '.join(POLICY_CLASSES)}") from None
