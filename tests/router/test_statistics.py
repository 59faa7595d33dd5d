"""ModelStatistics summed over the backends: counts and durations add, the latest inference wins."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from helmrec.router.statistics import sum_statistics


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
