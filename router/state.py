"""What a routing policy sees: the request's routing features and each backend's state.

Both are plain synchronous objects with no gRPC in them, so the same policies
run in the live router and in the discrete-event cluster simulator (load/sim),
which builds `BackendState`s for simulated nodes and calls `admit`/`release`
exactly where the router does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from helmrec.router.emb_locality import HotItemSketch, item_slots
from helmrec.router.kv_residency import KVResidency

_NO_ITEMS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class RouteRequest:
    """The parts of an hstu_ensemble request that decide where it should go.

    `user_id` is None for requests that carry no USER_ID (other models, metadata):
    they have no KV to reuse. `candidates` is the CANDIDATE_ITEM_IDS array (a
    zero-copy view of the request bytes in the live router).
    """

    user_id: int | None = None
    history_len: int = 0
    candidates: np.ndarray = field(default_factory=lambda: _NO_ITEMS)

    def __post_init__(self) -> None:
        if self.history_len < 0:
            raise ValueError(f"RouteRequest.history_len must be >= 0, got {self.history_len}")

    @cached_property
    def item_slots(self) -> np.ndarray:
        """The candidates' EMB-sketch slots, hashed once for all backends."""
        return item_slots(self.candidates)


@dataclass(eq=False)
class BackendState:
    """One backend as the router knows it.

    `in_flight` counts this router's requests that have not been answered;
    `queue_depth` is what the backend itself reports waiting (all clients).
    `kv` and `emb` are the router's estimates of the backend's two caches.
    """

    name: str
    max_in_flight: int = 64
    healthy: bool = True
    in_flight: int = 0
    queue_depth: float = 0.0
    alpha: float | None = None
    kv: KVResidency = field(default_factory=KVResidency)
    emb: HotItemSketch = field(default_factory=HotItemSketch)
    served: int = 0
    # Removed from the backend list (`--backend-file`): out of rotation for good,
    # never probed back in; the requests it still has in flight are answered.
    retired: bool = False

    @property
    def load(self) -> float:
        """Requests at the backend: ours in flight, or what it reports queued if more."""
        return max(float(self.in_flight), self.queue_depth)

    @property
    def has_room(self) -> bool:
        return self.healthy and self.in_flight < self.max_in_flight

    def admit(self, request: RouteRequest) -> None:
        """The request was sent here: count it in flight and record what it leaves in the caches."""
        self.in_flight += 1
        self.note(request)

    def note(self, request: RouteRequest) -> None:
        """Record what a request sent here leaves in its caches (a stream's later messages)."""
        self.served += 1
        if request.user_id is not None:
            self.kv.record(request.user_id, request.history_len)
        if len(request.candidates):
            self.emb.observe(request.item_slots)

    def release(self) -> None:
        """The backend answered (or failed) the request."""
        if self.in_flight <= 0:
            raise RuntimeError(f"backend {self.name}: release() without a matching admit()")
        self.in_flight -= 1

    def mark_down(self) -> None:
        """Out of rotation; its caches are gone for routing purposes once it comes back."""
        self.healthy = False
        self.kv.clear()
        self.emb.clear()

    def mark_up(self) -> None:
        if not self.retired:
            self.healthy = True

    def retire(self) -> None:
        """Taken off the backend list: no new requests; what it has in flight drains."""
        self.retired = True
        self.mark_down()

    def rejoin(self) -> None:
        """Back on the backend list: out of rotation until a probe finds it ready."""
        self.retired = False
