"""User story: many stock clients at once, of ragged lengths, over gRPC and HTTP, sync and
asyncio: hstu_pool ranks them in groups (Triton hands it several requests per execute),
each client gets its own scores, and the one bad request among them gets its own
INVALID_ARG while the others are answered."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helmrec import schema
from helmrec.load.client import infer_inputs
from tests.serving.test_e2e import Request, expected_scores

pytestmark = pytest.mark.e2e
CLIENTS = 16


def _request(k: int) -> Request:
    """Client k's request: its own user and its own history and candidate counts."""
    rng = np.random.default_rng(k)
    n, c = 3 + (3 * k) % 60, 1 + (k * 7) % 23  # tiny: at most 64 events and 64 candidates
    return Request(
        user_id=np.array([1000 + k], np.int64),
        history=rng.integers(0, 100, n).astype(np.int64),
        timestamps=np.cumsum(rng.integers(1, 500, n)).astype(np.int64),
        actions=rng.integers(0, 2, n).astype(np.int32),
        candidates=rng.integers(0, 100, c).astype(np.int64),
    )


def _bad() -> Request:
    request = _request(99)
    request.candidates = np.array([1, 2, 10**9], np.int64)  # outside the item table
    return request


def _statistics(server) -> tuple[int, int]:
    """hstu_pool's (requests, executions) so far: fewer executions means groups formed."""
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(schema.POOL_MODEL, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrent_clients_are_ranked_in_groups_and_a_bad_one_errs_alone(triton_server, tiny_repository, protocol) -> None:
    module = grpcclient if protocol == "grpc" else httpclient
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    requests = [_request(k) for k in range(CLIENTS)] + [_bad()]
    results: list[object] = [None] * len(requests)
    start = threading.Barrier(len(requests))
    before = _statistics(triton_server)

    def client(i: int) -> None:
        c = module.InferenceServerClient(url)
        start.wait()
        for _ in range(3):  # several rounds, so requests overlap in the server's queue
            try:
                results[i] = c.infer(schema.ENSEMBLE_MODEL, infer_inputs(module, requests[i].arrays())).as_numpy(schema.SCORES)
            except InferenceServerException as exc:
                results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for request, result in zip(requests[:-1], results[:-1]):
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result, expected_scores(tiny_repository, request), rtol=1e-4, atol=1e-5)
    error = results[-1]
    assert isinstance(error, InferenceServerException)
    assert schema.CANDIDATE_ITEM_IDS in error.message() and "[0, " in error.message()
    inferences, executions = (a - b for a, b in zip(_statistics(triton_server), before))
    assert inferences == 3 * len(requests) and executions < inferences, (inferences, executions)


def test_asyncio_clients_are_answered_each_with_their_own_scores(triton_server, tiny_repository) -> None:
    requests = [_request(k) for k in range(CLIENTS)]

    async def run() -> list[np.ndarray]:
        client = grpcaio.InferenceServerClient(triton_server.grpc_url)
        try:
            answers = await asyncio.gather(
                *(client.infer(schema.ENSEMBLE_MODEL, infer_inputs(grpcclient, r.arrays())) for r in requests)
            )
        finally:
            await client.close()
        return [a.as_numpy(schema.SCORES) for a in answers]

    for request, scores in zip(requests, asyncio.run(run())):
        np.testing.assert_allclose(scores, expected_scores(tiny_repository, request), rtol=1e-4, atol=1e-5)
