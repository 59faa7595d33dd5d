"""ModelStatistics of the cluster: every backend's answer, summed per (model, version).

A client that asks the router for statistics means the service it talks to,
not whichever backend the call happened to reach. Summed: inference and
execution counts, every duration (count and ns) of `inference_stats`, of each
`batch_stats` entry (matched by batch size) and of each `response_stats` entry
(matched by key); `last_inference` is the latest of the backends'. Not summed:
`memory_usage`, which is one backend's own (the first answer's is kept).
Only the exposed models are listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.message import Message
from tritonclient.grpc import service_pb2


def _add_durations(into: Message, other: Message) -> None:
    """Add each StatisticDuration field of `other` into `into` (scalar fields, e.g. batch_size, are keys)."""
    for field, value in other.ListFields():
        if field.message_type is None:
            continue
        total = getattr(into, field.name)
        total.count += value.count
        total.ns += value.ns


def _add_model(into: service_pb2.ModelStatistics, other: service_pb2.ModelStatistics) -> None:
    into.last_inference = max(into.last_inference, other.last_inference)
    into.inference_count += other.inference_count
    into.execution_count += other.execution_count
    _add_durations(into.inference_stats, other.inference_stats)
    by_size = {b.batch_size: b for b in into.batch_stats}
    for batch in other.batch_stats:
        if batch.batch_size in by_size:
            _add_durations(by_size[batch.batch_size], batch)
        else:
            by_size[batch.batch_size] = into.batch_stats.add()
            by_size[batch.batch_size].CopyFrom(batch)
    for key, response in other.response_stats.items():
        _add_durations(into.response_stats[key], response)


def sum_statistics(
    answers: Sequence[service_pb2.ModelStatisticsResponse], exposed: Iterable[str]
) -> service_pb2.ModelStatisticsResponse:
    """One response: the exposed models' statistics summed over `answers`, in first-seen order."""
    allowed = set(exposed)
    merged: dict[tuple[str, str], service_pb2.ModelStatistics] = {}
    for answer in answers:
        for model in answer.model_stats:
            if model.name not in allowed:
                continue
            key = (model.name, model.version)
            if key in merged:
                _add_model(merged[key], model)
            else:
                merged[key] = service_pb2.ModelStatistics()
                merged[key].CopyFrom(model)
    return service_pb2.ModelStatisticsResponse(model_stats=list(merged.values()))


# -- the same sum over Triton's HTTP/JSON statistics (numbers stay JSON numbers) ----
def _add_json_durations(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add each {count, ns} entry of `other` into `into` (other fields, e.g. batch_size, are keys)."""
    for key, value in other.items():
        if isinstance(value, dict):
            total = into.setdefault(key, {})
            for part in ("count", "ns"):
                total[part] = int(total.get(part, 0)) + int(value.get(part, 0))


def _add_json_model(into: dict[str, Any], other: dict[str, Any]) -> None:
    into["last_inference"] = max(int(into.get("last_inference", 0)), int(other.get("last_inference", 0)))
    for key in ("inference_count", "execution_count"):
        into[key] = int(into.get(key, 0)) + int(other.get(key, 0))
    _add_json_durations(into.setdefault("inference_stats", {}), other.get("inference_stats") or {})
    batches = into.setdefault("batch_stats", [])
    by_size = {b.get("batch_size"): b for b in batches}
    for batch in other.get("batch_stats") or []:
        if batch.get("batch_size") in by_size:
            _add_json_durations(by_size[batch.get("batch_size")], batch)
        else:
            by_size[batch.get("batch_size")] = batch
            batches.append(batch)
    responses = into.setdefault("response_stats", {})
    for key, response in (other.get("response_stats") or {}).items():
        _add_json_durations(responses.setdefault(key, {}), response)


def sum_json_statistics(answers: Sequence[dict[str, Any]], exposed: Iterable[str]) -> dict[str, Any]:
    """`sum_statistics` over decoded `/v2/models[/{m}]/stats` answers (JSON objects, which it
    reuses): one answer of the same shape, every count and duration still a JSON number."""
    allowed = set(exposed)
    merged: dict[tuple[Any, Any], dict[str, Any]] = {}
    for answer in answers:
        for model in answer.get("model_stats") or []:
            if model.get("name") not in allowed:
                continue
            key = (model.get("name"), model.get("version"))
            if key in merged:
                _add_json_model(merged[key], model)
            else:
                merged[key] = model
    return {"model_stats": list(merged.values())}
