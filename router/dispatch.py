"""Place a request on a backend, send it, retry once if the backend died first.

Shared by the gRPC and HTTP front doors, so both count against the same
in-flight limits and feed the same placement record. The front door supplies a
`send(index)` coroutine; it raises `BackendFailure` when the backend failed
before giving any answer (connection refused or reset), which is the only case
the request may be sent again: then the backend is taken out of rotation and
the request goes once to another. Every other outcome, including a backend's
own error answer, goes back to the client as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.policies import AllBackendsBusy, NoHealthyBackend, RoutingPolicy, make_policy
from helmrec.router.request_features import Features
from helmrec.router.state import BackendState

T = TypeVar("T")
# Sticky sequences remembered at once; the oldest is forgotten past this (a
# sequence that never sent sequence_end must not grow the table forever).
MAX_STICKY_SEQUENCES = 100_000


class BackendFailure(Exception):
    """The backend failed before answering; safe to send the request elsewhere."""


class RouteFailure(Exception):
    """The request cannot be served; `code` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "UNAVAILABLE" or "RESOURCE_EXHAUSTED"
        self.message = message


@dataclass
class RouterStats:
    """Counters of the router's own decisions (read by tests, the bench and /metrics)."""

    requests: int = 0
    answered: int = 0
    retries: int = 0
    unavailable: int = 0
    overloaded: int = 0
    # Requests placed where the router's record says the user's prefix is resident.
    predicted_kv_hits: int = 0
    with_user: int = 0

    @property
    def predicted_kv_hit_rate(self) -> float:
        return self.predicted_kv_hits / self.with_user if self.with_user else 0.0

    def plus(self, other: RouterStats) -> RouterStats:
        """Both sets of counters summed (the Python data plane's and the native hop's)."""
        return RouterStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class Dispatcher:
    """Backend state, the policy and the sticky-sequence table of one router."""

    def __init__(self, config: RouterConfig, policy: RoutingPolicy | None = None) -> None:
        self.config = config
        self.policy = policy if policy is not None else make_policy(config.policy, config.workers)
        # Read a request's candidates only for a policy that uses them (about 35 us a request:
        # the numpy view, the sketch's hash and its counters); an unknown policy gets them.
        self.reads_candidates: bool = getattr(self.policy, "reads_candidates", True)
        # One slot per backend ever listed, never reused for another address, so an
        # index held by an in-flight request stays valid while the list changes
        # (`--backend-file`); a removed backend's slot is `retired`.
        self.addresses: list[BackendAddress] = list(config.backends)
        self.backends: list[BackendState] = [
            BackendState(name=str(address), max_in_flight=config.max_in_flight_per_backend)
            for address in config.backends
        ]
        self.http_indices = self._http_indices()
        self.stats = RouterStats()
        self._sequences: OrderedDict[tuple[str, int | str], int] = OrderedDict()
        self._cursor = 0

    # -- the backend list ------------------------------------------------------------
    def _http_indices(self) -> list[int]:
        return [i for i, a in enumerate(self.addresses) if a.http_base is not None and not self.backends[i].retired]

    def update_backends(self, addresses: Sequence[BackendAddress]) -> tuple[list[int], list[int]]:
        """Make `addresses` the backend list; returns the slots (added, removed).

        A backend is its gRPC target. New ones (and ones listed again after a
        removal) start out of rotation until a probe finds them ready; removed
        ones are retired: no new requests, their in-flight ones are answered.
        A listed backend whose http=/metrics= ports changed keeps its slot and
        its record with the new ports.
        """
        wanted = {a.grpc_target: a for a in addresses}
        slots = {a.grpc_target: i for i, a in enumerate(self.addresses)}
        added, removed = [], []
        for target, index in slots.items():
            backend = self.backends[index]
            if target not in wanted:
                if not backend.retired:
                    backend.retire()
                    removed.append(index)
                continue
            self.addresses[index] = wanted[target]
            if backend.retired:
                backend.rejoin()
                added.append(index)
        for target, address in wanted.items():
            if target not in slots:
                self.addresses.append(address)
                self.backends.append(
                    BackendState(name=str(address), max_in_flight=self.config.max_in_flight_per_backend, healthy=False)
                )
                added.append(len(self.backends) - 1)
        self.http_indices = self._http_indices()
        return added, removed

    def listed(self) -> list[int]:
        """Slots of the backends on the current list (not retired)."""
        return [i for i, b in enumerate(self.backends) if not b.retired]

    # -- choosing ------------------------------------------------------------------
    def _choose(self, features: Features, among: Sequence[int]) -> int:
        """Index (into self.backends) for this request, among the allowed backends."""
        if features.sequence is not None and features.sequence in self._sequences:
            index = self._sequences[features.sequence]
            backend = self.backends[index]
            if not backend.healthy:
                raise RouteFailure(
                    "UNAVAILABLE", f"sequence {features.sequence[1]} lives on backend {backend.name}, which is down"
                )
            if not backend.has_room:
                raise RouteFailure(
                    "RESOURCE_EXHAUSTED",
                    f"router overloaded: backend {backend.name} of sequence {features.sequence[1]} "
                    f"has {backend.in_flight} requests in flight (limit {backend.max_in_flight})",
                )
            return index
        view = [self.backends[i] for i in among]
        try:
            index = among[self.policy.choose(features.route, view)]
        except NoHealthyBackend as exc:
            raise RouteFailure("UNAVAILABLE", str(exc)) from None
        except AllBackendsBusy as exc:
            raise RouteFailure("RESOURCE_EXHAUSTED", str(exc)) from None
        if features.sequence is not None:
            self._sequences[features.sequence] = index
            while len(self._sequences) > MAX_STICKY_SEQUENCES:
                self._sequences.popitem(last=False)
        return index

    def place(self, features: Features, among: Sequence[int] | None = None) -> int:
        """Choose a backend and count the request on it; the caller must `finish` it."""
        among = range(len(self.backends)) if among is None else among
        index = self._choose(features, among)
        request = features.route
        backend = self.backends[index]
        if request.user_id is not None:
            self.stats.with_user += 1
            if backend.kv.cached_len(request.user_id, request.history_len) > 0:
                self.stats.predicted_kv_hits += 1
        backend.admit(request)
        self.policy.on_placed(request, index, self.backends)
        return index

    def finish(self, features: Features, index: int, ok: bool) -> None:
        self.backends[index].release()
        self.policy.on_done(features.route, index, ok, self.backends)
        if features.sequence_end and features.sequence is not None:
            self._sequences.pop(features.sequence, None)

    def any_healthy(self, among: Sequence[int] | None = None) -> int:
        """A healthy backend in turn, for requests with no routing features (metadata, health)."""
        among = self.listed() if among is None else list(among)
        for _ in range(len(among)):
            index = among[self._cursor % len(among)]
            self._cursor += 1
            if self.backends[index].healthy:
                return index
        raise RouteFailure("UNAVAILABLE", f"no healthy backend (all {len(among)} are down)")

    def mark_down(self, index: int) -> None:
        self.backends[index].mark_down()

    # -- sending -------------------------------------------------------------------
    def place_counted(self, features: Features, among: Sequence[int] | None = None) -> int:
        """`place`, with a refusal counted in the stats before it is raised."""
        try:
            return self.place(features, among)
        except RouteFailure as exc:
            if exc.code == "UNAVAILABLE":
                self.stats.unavailable += 1
            else:
                self.stats.overloaded += 1
            raise

    def failed(self, features: Features, index: int, retried: bool, reason: str) -> None:
        """The backend failed before answering: release the request and take the backend out.

        Returns when the request may go once more elsewhere (the caller places it
        again); raises RouteFailure(UNAVAILABLE) when it was already retried or is
        part of a sequence whose state was on that backend.
        """
        self.finish(features, index, ok=False)
        self.mark_down(index)
        sticky = features.sequence is not None
        if sticky:
            self._sequences.pop(features.sequence, None)  # type: ignore[arg-type]
        if not retried and not sticky:
            self.stats.retries += 1
            return
        self.stats.unavailable += 1
        what = "its sequence state was there" if sticky else "and the retry's backend failed too"
        raise RouteFailure(
            "UNAVAILABLE", f"backend {self.backends[index].name} failed before answering ({reason}); {what}"
        )

    def answered(self, features: Features, index: int) -> None:
        self.finish(features, index, ok=True)
        self.stats.answered += 1

    async def dispatch(
        self,
        features: Features,
        send: Callable[[int], Awaitable[T]],
        among: Sequence[int] | None = None,
    ) -> T:
        """Send through `send(index)`; one retry elsewhere if the first backend fails before answering."""
        self.stats.requests += 1
        retried = False
        while True:
            index = self.place_counted(features, among)
            try:
                result = await send(index)
            except BackendFailure as exc:
                self.failed(features, index, retried, str(exc))
                retried = True
                continue
            except BaseException:
                self.finish(features, index, ok=False)
                raise
            self.answered(features, index)
            return result
