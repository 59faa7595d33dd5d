"""ModelStatistics summed over the backends: counts and durations add, the latest inference wins."""

from __future__ import annotations

import json

from tritonclient.grpc import service_pb2

from helmrec.router.statistics import sum_json_statistics, sum_statistics
from helmrec.router.worker_metrics import merge


def backend(success: int, last: int, batches: dict[int, int], memory: int) -> service_pb2.ModelStatisticsResponse:
    model = service_pb2.ModelStatistics(name="hstu_ensemble", version="1", last_inference=last)
    model.inference_count = model.execution_count = success
    model.inference_stats.success.count, model.inference_stats.success.ns = success, 1000 * success
    model.inference_stats.queue.ns = 7 * success
    for size, count in batches.items():
        batch = model.batch_stats.add(batch_size=size)
        batch.compute_infer.count, batch.compute_infer.ns = count, 10 * count
    model.response_stats["0"].success.count = success
    model.memory_usage.add(type="GPU", id=0, byte_size=memory)
    internal = service_pb2.ModelStatistics(name="hstu_pool", version="1", inference_count=99)
    return service_pb2.ModelStatisticsResponse(model_stats=[model, internal])


def test_statistics_of_two_backends_add_up_per_model_and_batch_size() -> None:
    total = sum_statistics([backend(3, 50, {1: 3}, 100), backend(5, 40, {1: 4, 2: 1}, 200)], ["hstu_ensemble"])
    (model,) = total.model_stats  # the internal model is not exposed
    assert (model.name, model.last_inference, model.inference_count, model.execution_count) == ("hstu_ensemble", 50, 8, 8)
    assert (model.inference_stats.success.count, model.inference_stats.success.ns) == (8, 8000)
    assert model.inference_stats.queue.ns == 56
    assert {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in model.batch_stats} == {1: (7, 70), 2: (1, 10)}
    assert model.response_stats["0"].success.count == 8
    assert [m.byte_size for m in model.memory_usage] == [100]  # one backend's own, never summed


def test_no_answers_sum_to_no_models() -> None:
    assert not sum_statistics([], ["hstu_ensemble"]).model_stats


def json_stats(name: str, success: int, last: int) -> dict:
    """A model's entry as Triton's HTTP /v2/models/stats writes it."""
    duration = {"count": success, "ns": 1000 * success}
    return {
        "name": name,
        "version": "1",
        "last_inference": last,
        "inference_count": success,
        "execution_count": success,
        "inference_stats": {"success": duration, "fail": {"count": 0, "ns": 0}, "queue": {"count": success, "ns": 7}},
        "batch_stats": [{"batch_size": 1, "compute_infer": dict(duration)}],
        "response_stats": {},
        "memory_usage": [],
    }


def test_http_statistics_are_summed_as_json_numbers_exposed_models_only() -> None:
    a = {"model_stats": [json_stats("hstu_ensemble", 3, 10), json_stats("hstu_pool", 3, 10)]}
    b = {"model_stats": [json_stats("hstu_ensemble", 5, 20)]}
    b["model_stats"][0]["batch_stats"].append({"batch_size": 4, "compute_infer": {"count": 1, "ns": 9}})
    summed = sum_json_statistics([a, b], ["hstu_ensemble"])
    (model,) = summed["model_stats"]
    assert model["name"] == "hstu_ensemble" and model["last_inference"] == 20
    assert model["inference_count"] == 8 and model["execution_count"] == 8
    assert model["inference_stats"]["success"] == {"count": 8, "ns": 8000}
    assert model["inference_stats"]["queue"] == {"count": 8, "ns": 14}
    assert [(s["batch_size"], s["compute_infer"]["count"]) for s in model["batch_stats"]] == [(1, 8), (4, 1)]
    assert '"count": 8' in json.dumps(summed)  # numbers, not strings


def test_worker_metrics_merge_sums_counters_and_takes_min_health() -> None:
    worker = (
        "# TYPE helmrec_router_requests_total counter\nhelmrec_router_requests_total {n}\n"
        "# TYPE helmrec_router_backend_healthy gauge\n"
        'helmrec_router_backend_healthy{{backend="a"}} {h}\n'
        "# TYPE helmrec_router_backend_in_flight gauge\n"
        'helmrec_router_backend_in_flight{{backend="a"}} {n}\n'
    )
    families = {f.name: f for f in merge([worker.format(n=3, h=1), worker.format(n=4, h=0)])}
    assert [s.value for s in families["helmrec_router_requests"].samples] == [7]
    assert [s.value for s in families["helmrec_router_backend_in_flight"].samples] == [7]
    assert [s.value for s in families["helmrec_router_backend_healthy"].samples] == [0]
