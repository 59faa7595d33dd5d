"""Pull the routing features out of an inference request without changing it.

The router forwards the client's bytes untouched; it only reads USER_ID, the
history length and the candidate ids (a zero-copy numpy view) from a parsed
copy, plus the sequence parameters that make a request sticky. Anything it
cannot read is routed without features: validating requests is `hstu_pool`'s
job, and the backend's own error (naming the tensor) reaches the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod

import numpy as np
from tritonclient.grpc import service_pb2

from helmrec.router.state import RouteRequest
from helmrec.schema import CANDIDATE_ITEM_IDS, HISTORY_ITEM_IDS, USER_ID

_INT_DTYPES = {"INT64": "<i8", "INT32": "<i4", "UINT64": "<u8", "UINT32": "<u4"}
_NO_FEATURES = RouteRequest()


@dataclass(frozen=True)
class Features:
    """What routing needs from one request."""

    route: RouteRequest
    # (model, sequence id) when the request is part of a Triton sequence; such
    # requests must all reach the backend that holds the sequence's state.
    sequence: tuple[str, int | str] | None = None
    sequence_end: bool = False


def _count(shape: object) -> int:
    n = 1
    for dim in shape:  # type: ignore[attr-defined]
        n *= int(dim)
    return n


def _route(user: np.ndarray | None, history_len: int, candidates: np.ndarray | None) -> RouteRequest:
    if user is None or len(user) != 1:
        return _NO_FEATURES if candidates is None else RouteRequest(candidates=candidates)
    return RouteRequest(
        user_id=int(user[0]),
        history_len=max(0, history_len),
        candidates=candidates if candidates is not None else _NO_FEATURES.candidates,
    )


# -- gRPC --------------------------------------------------------------------------
_SIGNED = {"INT64": True, "INT32": True, "UINT64": False, "UINT32": False}


def _grpc_raw(request: service_pb2.ModelInferRequest, index: int) -> tuple[str | None, bytes | None]:
    """(the integer dtype of input `index`, or None; its raw bytes when the request sends raw contents)."""
    dtype = _INT_DTYPES.get(request.inputs[index].datatype)
    if dtype is None or not request.raw_input_contents or index >= len(request.raw_input_contents):
        return dtype, None
    return dtype, request.raw_input_contents[index]


def _grpc_user(request: service_pb2.ModelInferRequest, index: int) -> int | None:
    """The one USER_ID value, read straight from its bytes (no numpy array for one integer)."""
    dtype, raw = _grpc_raw(request, index)
    if dtype is None or (request.raw_input_contents and raw is None):
        return None
    if raw is not None:
        if len(raw) != np.dtype(dtype).itemsize:
            return None
        return int.from_bytes(raw, "little", signed=_SIGNED[request.inputs[index].datatype])
    values = _grpc_values(request, index)
    return None if values is None or len(values) != 1 else int(values[0])


def _grpc_values(request: service_pb2.ModelInferRequest, index: int) -> np.ndarray | None:
    tensor = request.inputs[index]
    dtype, raw = _grpc_raw(request, index)
    if dtype is None or (request.raw_input_contents and raw is None):
        return None
    if raw is not None:
        if len(raw) % np.dtype(dtype).itemsize:
            return None
        return np.frombuffer(raw, dtype=dtype)
    contents = tensor.contents
    values = {
        "INT64": contents.int64_contents,
        "INT32": contents.int_contents,
        "UINT64": contents.uint64_contents,
        "UINT32": contents.uint_contents,
    }[tensor.datatype]
    return np.asarray(values, dtype=np.int64)


def _grpc_sequence(request: service_pb2.ModelInferRequest) -> tuple[tuple[str, int | str] | None, bool]:
    params = request.parameters
    if "sequence_id" not in params:
        return None, False
    p = params["sequence_id"]
    seq: int | str = p.string_param if p.WhichOneof("parameter_choice") == "string_param" else p.int64_param
    if seq in (0, ""):
        return None, False
    end = "sequence_end" in params and params["sequence_end"].bool_param
    return (request.model_name, seq), end


def from_grpc(request: service_pb2.ModelInferRequest, candidates: bool = True) -> Features:
    """Features of a parsed ModelInferRequest (the caller forwards the original bytes).

    `candidates=False` leaves CANDIDATE_ITEM_IDS unread, for policies that do not use it.
    """
    user = items = None
    history_len = 0
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name == USER_ID:
            user = _grpc_user(request, i)
        elif name == HISTORY_ITEM_IDS:
            history_len = prod(tensor.shape)
        elif candidates and name == CANDIDATE_ITEM_IDS:
            values = _grpc_values(request, i)
            items = None if values is None else values.astype(np.int64, copy=False)
    sequence, end = _grpc_sequence(request) if request.parameters else (None, False)
    if user is None:
        route = _NO_FEATURES if items is None else RouteRequest(candidates=items)
    else:
        route = RouteRequest(user_id=user, history_len=max(0, history_len),
                             candidates=items if items is not None else _NO_FEATURES.candidates)
    return Features(route, sequence, end)


# -- HTTP/REST (KServe v2 JSON, with Triton's binary-tensor extension) ------------
def from_http(model: str, body: bytes, header_length: int | None, candidates: bool = True) -> Features:
    """Features of a v2 infer body: JSON, or a JSON header of `header_length` bytes + binary tensors.

    `candidates=False` leaves CANDIDATE_ITEM_IDS unread, for policies that do not use it.
    """
    try:
        header = json.loads(body if header_length is None else body[:header_length])
        inputs = header.get("inputs", [])
        binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
        user = items = None
        history_len = 0
        offset = 0
        for tensor in inputs:
            name, dtype = tensor.get("name"), _INT_DTYPES.get(tensor.get("datatype", ""))
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                chunk = binary[offset : offset + int(size)]
                offset += int(size)
                values = np.frombuffer(chunk, dtype=dtype) if dtype and len(chunk) % np.dtype(dtype).itemsize == 0 else None
            else:
                values = np.asarray(tensor.get("data", []), dtype=np.int64).ravel() if dtype else None
            if name == USER_ID:
                user = values
            elif name == HISTORY_ITEM_IDS:
                history_len = _count(tensor.get("shape", []))
            elif candidates and name == CANDIDATE_ITEM_IDS and values is not None:
                items = values.astype(np.int64, copy=False)
        params = header.get("parameters") or {}
        seq = params.get("sequence_id")
        sequence = (model, seq) if seq not in (None, 0, "") else None
        return Features(_route(user, history_len, items), sequence, bool(params.get("sequence_end", False)))
    except (ValueError, TypeError, AttributeError, OverflowError):
        return Features(_NO_FEATURES)
