"""The public request of `hstu_ensemble` and the rules it must satisfy.

Every rule lives here, once, so the error a client sees always names the
tensor and the rule it broke, whichever model in the repository caught it.
Triton itself already rejects a wrong datatype or rank for declared inputs
(naming the input); these rules cover what a config.pbtxt cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from helmrec.pool.ranker import RankRequest

USER_ID = "USER_ID"
HISTORY_ITEM_IDS = "HISTORY_ITEM_IDS"
HISTORY_TIMESTAMPS = "HISTORY_TIMESTAMPS"
HISTORY_ACTIONS = "HISTORY_ACTIONS"
CANDIDATE_ITEM_IDS = "CANDIDATE_ITEM_IDS"
QUERY_TIMESTAMP = "QUERY_TIMESTAMP"
SCORES = "SCORES"

# What a client sends to hstu_ensemble (HISTORY_ACTIONS may be left out).
PUBLIC_INPUTS = (USER_ID, HISTORY_ITEM_IDS, HISTORY_TIMESTAMPS, HISTORY_ACTIONS, CANDIDATE_ITEM_IDS)
# What the bare network `hstu` takes besides an optional QUERY_TIMESTAMP.
NETWORK_INPUTS = PUBLIC_INPUTS[1:]


class RequestError(ValueError):
    """A request that breaks a rule; the message names the tensor and the rule."""

    def __init__(self, tensor: str, rule: str) -> None:
        super().__init__(f"{tensor}: {rule}")
        self.tensor = tensor
        self.rule = rule


@dataclass(frozen=True)
class Limits:
    """What the served network accepts; read from its weights, never repeated in config."""

    num_items: int
    num_actions: int
    max_seq_len: int
    max_candidates: int


def _vector(name: str, t: torch.Tensor) -> torch.Tensor:
    """The tensor on the host: the rules run there, on numpy views of it (at request sizes a
    numpy reduction costs a few microseconds, a torch CPU op several times that), and the pool
    matches histories on the host anyway."""
    if t.dim() != 1:
        raise RequestError(name, f"must be a 1-D tensor, got shape {list(t.shape)}")
    return t.cpu()


def _ids_in_range(name: str, ids: np.ndarray, upper: int) -> None:
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise RequestError(name, f"item ids must be >= 0, got {low}")
    if high >= upper:
        raise RequestError(name, f"item ids must be < {upper} (the catalogue size), got {high}")


def validate(
    tensors: dict[str, torch.Tensor | None],
    limits: Limits,
    with_user: bool = True,
) -> RankRequest:
    """Check one request against every rule; raise RequestError on the first broken one.

    HISTORY_ACTIONS is optional: a client that does not track actions sends
    none, and every history event counts as action 0. The bare network (`hstu`)
    has no user, so `with_user=False` skips USER_ID and reports user 0.
    """
    required = (HISTORY_ITEM_IDS, HISTORY_TIMESTAMPS, CANDIDATE_ITEM_IDS)
    for name in ((USER_ID,) if with_user else ()) + required:
        if tensors.get(name) is None:
            raise RequestError(name, "is required")
    user_id = 0
    if with_user:
        user = tensors[USER_ID]
        assert user is not None
        if user.numel() != 1:
            raise RequestError(USER_ID, f"must hold exactly one id, got {user.numel()}")
        user_id = int(user.reshape(-1)[0])
        if user_id < 0:
            raise RequestError(USER_ID, f"must be >= 0, got {user_id}")

    hist = _vector(HISTORY_ITEM_IDS, tensors[HISTORY_ITEM_IDS])  # type: ignore[arg-type]
    ts = _vector(HISTORY_TIMESTAMPS, tensors[HISTORY_TIMESTAMPS])  # type: ignore[arg-type]
    cands = _vector(CANDIDATE_ITEM_IDS, tensors[CANDIDATE_ITEM_IDS])  # type: ignore[arg-type]
    n = hist.numel()
    if n == 0:
        raise RequestError(HISTORY_ITEM_IDS, "must hold at least one item")
    if n > limits.max_seq_len:
        raise RequestError(HISTORY_ITEM_IDS, f"length {n} exceeds the maximum history length {limits.max_seq_len}")
    _ids_in_range(HISTORY_ITEM_IDS, hist.numpy(), limits.num_items)
    if ts.numel() != n:
        raise RequestError(HISTORY_TIMESTAMPS, f"length {ts.numel()} must equal the length of {HISTORY_ITEM_IDS} ({n})")
    ts_np = ts.numpy()
    if n > 1 and bool((ts_np[1:] < ts_np[:-1]).any()):
        raise RequestError(HISTORY_TIMESTAMPS, "must be non-decreasing (oldest event first)")
    if int(ts_np[0]) < 0:  # non-decreasing: the first is the smallest
        raise RequestError(HISTORY_TIMESTAMPS, "must be >= 0 (seconds since the epoch)")

    actions_in = tensors.get(HISTORY_ACTIONS)
    if actions_in is None:
        actions = torch.zeros(n, dtype=torch.int64)
    else:
        actions = _vector(HISTORY_ACTIONS, actions_in)
        if actions.numel() != n:
            raise RequestError(HISTORY_ACTIONS, f"length {actions.numel()} must equal the length of {HISTORY_ITEM_IDS} ({n})")
        actions_np = actions.numpy()
        if n and (int(actions_np.min()) < 0 or int(actions_np.max()) >= limits.num_actions):
            raise RequestError(HISTORY_ACTIONS, f"action ids must be in [0, {limits.num_actions})")

    c = cands.numel()
    if c == 0:
        raise RequestError(CANDIDATE_ITEM_IDS, "must hold at least one candidate")
    if c > limits.max_candidates:
        raise RequestError(CANDIDATE_ITEM_IDS, f"{c} candidates exceed the maximum of {limits.max_candidates}")
    _ids_in_range(CANDIDATE_ITEM_IDS, cands.numpy(), limits.num_items)

    return RankRequest(
        user_id=user_id,
        hist_ids=hist.to(torch.int64).contiguous(),
        hist_ts=ts.to(torch.int64).contiguous(),
        hist_actions=actions.to(torch.int64).contiguous(),
        cand_ids=cands.to(torch.int64).contiguous(),
        # The request carries no clock of its own: it is scored at the moment of
        # its latest event, which keeps a replayed request's scores reproducible.
        query_ts=int(ts_np[-1]),
    )
