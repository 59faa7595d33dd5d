"""The cost table: one JSON file of per-request service costs measured on a serving path.

`helmrec calibrate` writes it (measured through `PooledRanker`, the path `hstu_pool`
serves with); `CostModel.from_table` reads it, so the node simulator and the cluster
simulator take their costs from a measurement of a named device on a stated date
instead of from constants scaled by assumptions. This module is only the format: what
a table must hold and the rule each field keeps. It reads nothing else of helmrec, so
the allocator (which may not import the pool) and the measuring tool share it.

A table holds the raw timings (so a reader can refit or check them), the fitted
constants of `CostModel` and, per request kind, the batching efficiency: the
per-request cost in a group of g requests served by one `rank_many` call over the
cost of the same request alone.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# The request kinds of the served path: a full KV hit (rank only), a returning user with
# new events (extend the cached prefix, then rank), a new user (full prefill, then rank).
KINDS = ("hit", "extend", "prefill")
# CostModel's service-time constants (microseconds) and sizes (bytes), as a table names them.
TIME_CONSTANTS = (
    "prefill_fixed_us",
    "prefill_token_us",
    "prefill_token2_us",
    "rank_fixed_us",
    "rank_candidate_us",
    "rank_candidate_token_us",
    "emb_miss_row_us",
    "emb_hit_row_us",
    "request_overhead_us",
    "history_token_us",
    "reuse_token_us",
)
SIZE_CONSTANTS = ("emb_row_bytes", "kv_token_bytes")
_TEXT_KEYS = ("device", "torch", "preset", "dtype")


class CostTableError(ValueError):
    """A table that breaks a rule; the message names the file, the key and the rule."""


def _fail(where: str, key: str, rule: str, value: Any) -> CostTableError:
    shown = repr(value)
    return CostTableError(f"{where}: {key} {rule}, got {shown[:80] + '...' if len(shown) > 80 else shown}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    if key not in data:
        raise CostTableError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, Mapping):
        raise _fail(where, key, "must be an object", value)
    return value


def validate(data: Any, where: str = "cost table") -> dict[str, Any]:
    """`data` if it keeps every rule of the format, else CostTableError naming the first broken one."""
    if not isinstance(data, Mapping):
        raise _fail(where, "the table", "must be a JSON object", data)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(where, "schema_version", f"must be {SCHEMA_VERSION} (the format this helmrec reads)", version)
    for key in _TEXT_KEYS:
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(where, key, "must be a non-empty string", data.get(key))
    date = data.get("date_utc")
    try:
        datetime.datetime.fromisoformat(date)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(where, "date_utc", "must be an ISO 8601 date-time", date) from None
    constants = _mapping(data, "constants", where)
    for key in TIME_CONSTANTS:
        value = constants.get(key)
        if not _number(value) or value < 0:
            raise _fail(where, f"constants.{key}", "must be a finite number >= 0 (microseconds)", value)
    for key in SIZE_CONSTANTS:
        value = constants.get(key)
        if not _int(value) or value <= 0:
            raise _fail(where, f"constants.{key}", "must be an int > 0 (bytes)", value)
    unknown = sorted(set(constants) - set(TIME_CONSTANTS) - set(SIZE_CONSTANTS))
    if unknown:
        raise _fail(where, "constants", f"holds only {[*TIME_CONSTANTS, *SIZE_CONSTANTS]}; unknown keys", unknown)
    _validate_batching(_mapping(data, "batch_efficiency", where), where)
    raw = _mapping(data, "raw", where)
    requests = raw.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _fail(where, "raw.requests", "must be a non-empty list of measured cells", requests)
    for i, cell in enumerate(requests):
        validate_cell(cell, f"{where}: raw.requests[{i}]")
    return dict(data)


def _validate_batching(batching: Mapping[str, Any], where: str) -> None:
    for kind, curve in batching.items():
        key = f"batch_efficiency.{kind}"
        if kind not in KINDS:
            raise _fail(where, "batch_efficiency", f"keys must be request kinds {list(KINDS)}", kind)
        if not isinstance(curve, Mapping) or not curve:
            raise _fail(where, key, "must be a non-empty object {group size: factor}", curve)
        for group, factor in curve.items():
            if not (isinstance(group, str) and group.isdigit() and int(group) >= 1):
                raise _fail(where, key, "keys must be group sizes >= 1 written as strings", group)
            if not _number(factor) or factor <= 0:
                raise _fail(where, f"{key}.{group}", "must be a finite number > 0", factor)
        if not (_number(curve.get("1")) and abs(curve["1"] - 1.0) < 1e-9):
            raise _fail(where, f"{key}.1", "must be 1.0 (a request alone is the reference)", curve.get("1"))


def validate_cell(cell: Any, where: str) -> None:
    """One measured cell of the grid: a request kind at a shape and group size, and its cost."""
    if not isinstance(cell, Mapping):
        raise _fail(where, "the cell", "must be an object", cell)
    if cell.get("kind") not in KINDS:
        raise _fail(where, "kind", f"must be one of {list(KINDS)}", cell.get("kind"))
    for key, low in (("history", 1), ("candidates", 1), ("new_tokens", 0), ("group", 1)):
        if not _int(cell.get(key)) or cell[key] < low:
            raise _fail(where, key, f"must be an int >= {low}", cell.get(key))
    if not _number(cell.get("us_per_request")) or cell["us_per_request"] <= 0:
        raise _fail(where, "us_per_request", "must be a finite number > 0", cell.get("us_per_request"))
    for key in ("emb_hit_rows", "emb_miss_rows"):
        if not _number(cell.get(key)) or cell[key] < 0:
            raise _fail(where, key, "must be a finite number >= 0 (rows per request)", cell.get(key))
    if not isinstance(cell.get("fit"), bool):
        raise _fail(where, "fit", "must be true or false (whether the fit used this cell)", cell.get("fit"))
    kind, n, k = cell["kind"], cell["history"], cell["new_tokens"]
    rule = {"hit": ("0 (nothing computed)", k == 0), "extend": ("in [1, history)", 0 < k < n), "prefill": ("the history", k == n)}
    if not rule[kind][1]:
        raise _fail(where, "new_tokens", f"of a {kind} must be {rule[kind][0]}", k)


def read(path: str | Path) -> dict[str, Any]:
    """The validated table at `path`; a file that is not JSON is an error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CostTableError(f"{path}: not JSON ({exc})") from None
    return validate(data, str(path))


def write(data: Mapping[str, Any], path: str | Path) -> None:
    """Validate, then write `data` to `path` (parents made): a table that could not be read back is never written."""
    validate(data, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
