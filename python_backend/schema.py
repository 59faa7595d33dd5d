"""The public contract of `hstu_ensemble`: its tensors and the rules a request must satisfy.

Every name, dtype, shape and rule lives here, once, so the error a client sees
always names the tensor and the rule it broke, whichever model or library call
caught it. Triton itself already rejects a wrong datatype or rank for declared
inputs (naming the input); the config.pbtxt files declare the signatures below
(tests/serving/test_contract.py holds them to it), and `validate` covers what a
config.pbtxt cannot express. numpy only: the router and Locust import this
module on every process start, and it must not pull in torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

ENSEMBLE_MODEL = "hstu_ensemble"  # what clients, the router and Locust call
POOL_MODEL = "hstu_pool"  # the ensemble's one step: validates, owns the pool
NETWORK_MODEL = "hstu"  # the bare network (uncached), or its TensorRT engine

USER_ID = "USER_ID"
HISTORY_ITEM_IDS = "HISTORY_ITEM_IDS"
HISTORY_TIMESTAMPS = "HISTORY_TIMESTAMPS"
HISTORY_ACTIONS = "HISTORY_ACTIONS"
CANDIDATE_ITEM_IDS = "CANDIDATE_ITEM_IDS"
QUERY_TIMESTAMP = "QUERY_TIMESTAMP"
SCORES = "SCORES"

ANY = -1  # a dimension of any length, as config.pbtxt writes it

# Triton's datatype names and their numpy dtypes; config.pbtxt writes "TYPE_" + the name.
_NUMPY_DTYPES = {"INT64": np.dtype(np.int64), "INT32": np.dtype(np.int32), "FP32": np.dtype(np.float32)}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model's signature, as its config.pbtxt declares it.

    `required` is the contract's rule. A config.pbtxt may still declare a required
    input `optional: true`, so that a missing one reaches `validate` and gets an
    error naming it (an ensemble would otherwise stall on it)."""

    name: str
    dtype: str  # Triton's name: INT64, INT32, FP32
    dims: tuple[int, ...]
    required: bool = True

    @property
    def numpy_dtype(self) -> np.dtype:
        return _NUMPY_DTYPES[self.dtype]


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of one served model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


_SCORES = TensorSpec(SCORES, "FP32", (ANY, ANY))  # [candidates, tasks]

# What a client sends to hstu_ensemble, and what hstu_pool takes from it.
# HISTORY_ACTIONS is INT32 on the wire (a handful of action kinds) and may be left out.
ENSEMBLE = Signature(
    inputs=(
        TensorSpec(USER_ID, "INT64", (1,)),
        TensorSpec(HISTORY_ITEM_IDS, "INT64", (ANY,)),
        TensorSpec(HISTORY_TIMESTAMPS, "INT64", (ANY,)),
        TensorSpec(HISTORY_ACTIONS, "INT32", (ANY,), required=False),
        TensorSpec(CANDIDATE_ITEM_IDS, "INT64", (ANY,)),
    ),
    outputs=(_SCORES,),
)

# The bare network `hstu`: no user (it has no cache), every input INT64 as the
# exported graph takes it, and the time to score at (default: the latest event).
NETWORK = Signature(
    inputs=(
        TensorSpec(HISTORY_ITEM_IDS, "INT64", (ANY,)),
        TensorSpec(HISTORY_TIMESTAMPS, "INT64", (ANY,)),
        TensorSpec(HISTORY_ACTIONS, "INT64", (ANY,), required=False),
        TensorSpec(CANDIDATE_ITEM_IDS, "INT64", (ANY,)),
        TensorSpec(QUERY_TIMESTAMP, "INT64", (1,), required=False),
    ),
    outputs=(_SCORES,),
)

SIGNATURES = {ENSEMBLE_MODEL: ENSEMBLE, POOL_MODEL: ENSEMBLE, NETWORK_MODEL: NETWORK}
PUBLIC_INPUTS = ENSEMBLE.input_names
NETWORK_INPUTS = NETWORK.input_names


class RequestError(ValueError):
    """A request that breaks a rule; the message names the tensor and the rule."""

    def __init__(self, tensor: str, rule: str) -> None:
        super().__init__(f"{tensor}: {rule}")
        self.tensor = tensor
        self.rule = rule


class NetworkSizes(Protocol):
    """What `Limits.of` reads: an HSTUConfig, without importing the network's package."""

    num_items: int
    num_actions: int
    max_seq_len: int
    max_candidates: int


@dataclass(frozen=True)
class Limits:
    """What the served network accepts; read from its weights, never repeated in config."""

    num_items: int
    num_actions: int
    max_seq_len: int
    max_candidates: int

    @classmethod
    def of(cls, sizes: NetworkSizes) -> Limits:
        return cls(sizes.num_items, sizes.num_actions, sizes.max_seq_len, sizes.max_candidates)


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed every rule: int64 host vectors, oldest event first.

    Made by `validate` only; whoever holds one may skip the rules (the pool
    does), so building one by hand bypasses them."""

    user_id: int
    hist_ids: np.ndarray
    hist_ts: np.ndarray
    hist_actions: np.ndarray
    cand_ids: np.ndarray
    query_ts: int


# -- rules on sizes and id ranges: the network checks its own arguments with these too ----------------
def check_history_length(tensor: str, n: int, max_seq_len: int) -> None:
    if n > max_seq_len:
        raise RequestError(tensor, f"history length {n} exceeds max_seq_len {max_seq_len} (the network's longest)")


def check_candidate_count(tensor: str, c: int, max_candidates: int) -> None:
    if c > max_candidates:
        raise RequestError(tensor, f"{c} candidates exceed max_candidates {max_candidates} (the network's most)")


def check_id_range(tensor: str, low: int, high: int, upper: int, what: str) -> None:
    """`low`/`high`: the smallest and largest id of a non-empty tensor; `what`: item or action."""
    if low < 0 or high >= upper:
        raise RequestError(tensor, f"{what} ids must lie in [0, {upper}), got [{low}, {high}]")


# -- the request ------------------------------------------------------------------------------------
def _integers(name: str, value: np.ndarray) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise RequestError(name, f"must hold integers, got dtype {array.dtype}")
    return array


def _vector(name: str, value: np.ndarray) -> np.ndarray:
    """An int64 contiguous view (a copy only when the dtype differs: HISTORY_ACTIONS is INT32)."""
    array = _integers(name, value)
    if array.ndim != 1:
        raise RequestError(name, f"must be a 1-D tensor, got shape {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _scalar(name: str, value: np.ndarray) -> int:
    array = _integers(name, value)
    if array.size != 1:
        raise RequestError(name, f"must hold exactly one value, got {array.size}")
    return int(array.reshape(-1)[0])


def _ids(name: str, ids: np.ndarray, upper: int, what: str) -> None:
    if ids.size:
        check_id_range(name, int(ids.min()), int(ids.max()), upper, what)


def validate(tensors: Mapping[str, np.ndarray | None], limits: Limits, with_user: bool = True) -> ValidRequest:
    """Check one request against every rule; raise RequestError on the first broken one.

    `tensors` maps input names to host arrays (None: not sent). HISTORY_ACTIONS is
    optional: a client that does not track actions sends none, and every history
    event counts as action 0. Without QUERY_TIMESTAMP (hstu_ensemble has none) the
    request is scored at its latest event, which keeps a replayed request's scores
    reproducible, so it needs a history; with one, an empty history is a cold-start
    user. The bare network (`hstu`) has no user: `with_user=False` reports user 0.
    """
    required = (HISTORY_ITEM_IDS, HISTORY_TIMESTAMPS, CANDIDATE_ITEM_IDS)
    for name in ((USER_ID,) if with_user else ()) + required:
        if tensors.get(name) is None:
            raise RequestError(name, "is required")
    user_id = 0
    if with_user:
        user_id = _scalar(USER_ID, tensors[USER_ID])  # type: ignore[arg-type]
        if user_id < 0:
            raise RequestError(USER_ID, f"must be >= 0, got {user_id}")
    query = tensors.get(QUERY_TIMESTAMP)
    query_ts = None if query is None else _scalar(QUERY_TIMESTAMP, query)

    hist = _vector(HISTORY_ITEM_IDS, tensors[HISTORY_ITEM_IDS])  # type: ignore[arg-type]
    ts = _vector(HISTORY_TIMESTAMPS, tensors[HISTORY_TIMESTAMPS])  # type: ignore[arg-type]
    cands = _vector(CANDIDATE_ITEM_IDS, tensors[CANDIDATE_ITEM_IDS])  # type: ignore[arg-type]
    n = hist.size
    if n == 0 and query_ts is None:
        rule = f"must hold at least one item (without {QUERY_TIMESTAMP}, the latest event is the query time)"
        raise RequestError(HISTORY_ITEM_IDS, rule)
    check_history_length(HISTORY_ITEM_IDS, n, limits.max_seq_len)
    _ids(HISTORY_ITEM_IDS, hist, limits.num_items, "item")
    if ts.size != n:
        raise RequestError(HISTORY_TIMESTAMPS, f"length {ts.size} must equal the length of {HISTORY_ITEM_IDS} ({n})")
    if n > 1 and bool((ts[1:] < ts[:-1]).any()):
        raise RequestError(HISTORY_TIMESTAMPS, "must be non-decreasing (oldest event first)")
    if n and int(ts[0]) < 0:  # non-decreasing: the first is the smallest
        raise RequestError(HISTORY_TIMESTAMPS, "must be >= 0 (seconds since the epoch)")

    actions_in = tensors.get(HISTORY_ACTIONS)
    if actions_in is None:
        actions = np.zeros(n, dtype=np.int64)
    else:
        actions = _vector(HISTORY_ACTIONS, actions_in)
        if actions.size != n:
            raise RequestError(HISTORY_ACTIONS, f"length {actions.size} must equal the length of {HISTORY_ITEM_IDS} ({n})")
        _ids(HISTORY_ACTIONS, actions, limits.num_actions, "action")

    if cands.size == 0:
        raise RequestError(CANDIDATE_ITEM_IDS, "must hold at least one candidate")
    check_candidate_count(CANDIDATE_ITEM_IDS, cands.size, limits.max_candidates)
    _ids(CANDIDATE_ITEM_IDS, cands, limits.num_items, "item")

    return ValidRequest(
        user_id=user_id,
        hist_ids=hist,
        hist_ts=ts,
        hist_actions=actions,
        cand_ids=cands,
        query_ts=int(ts[-1]) if query_ts is None else query_ts,
    )


def ensemble_request(
    user_id: int,
    hist_ids: np.ndarray,
    hist_ts: np.ndarray,
    cand_ids: np.ndarray,
    hist_actions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """An `hstu_ensemble` request as named arrays in the declared dtypes (HISTORY_ACTIONS left out when None):
    what a client hands to tritonclient, so no caller spells a name or a wire dtype itself."""
    values = {
        USER_ID: np.array([user_id]),
        HISTORY_ITEM_IDS: hist_ids,
        HISTORY_TIMESTAMPS: hist_ts,
        HISTORY_ACTIONS: hist_actions,
        CANDIDATE_ITEM_IDS: cand_ids,
    }
    return {
        spec.name: np.asarray(values[spec.name]).astype(spec.numpy_dtype, copy=False)
        for spec in ENSEMBLE.inputs
        if values[spec.name] is not None
    }
