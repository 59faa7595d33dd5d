"""User story: an app with stock tritonclient ranks candidates through hstu_ensemble,
over gRPC and HTTP, and a malformed request gets a clear INVALID_ARG naming the
tensor while the server goes on answering valid requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helmrec import schema
from helmrec.hstu.weights import load
from helmrec.launcher import TritonServer
from helmrec.load.client import infer_inputs

pytestmark = pytest.mark.e2e
MODEL = schema.ENSEMBLE_MODEL


@dataclass
class Request:
    """One hstu_ensemble request as numpy arrays; a field set to None is not sent."""

    user_id: np.ndarray | None = field(default_factory=lambda: np.array([7], np.int64))
    history: np.ndarray | None = field(default_factory=lambda: np.array([3, 9, 4, 27, 11], np.int64))
    timestamps: np.ndarray | None = field(default_factory=lambda: np.array([100, 160, 400, 401, 900], np.int64))
    actions: np.ndarray | None = field(default_factory=lambda: np.array([1, 0, 1, 1, 0], np.int32))
    candidates: np.ndarray | None = field(default_factory=lambda: np.array([5, 6, 42, 8], np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        named = {
            schema.USER_ID: self.user_id,
            schema.HISTORY_ITEM_IDS: self.history,
            schema.HISTORY_TIMESTAMPS: self.timestamps,
            schema.HISTORY_ACTIONS: self.actions,
            schema.CANDIDATE_ITEM_IDS: self.candidates,
        }
        return {k: v for k, v in named.items() if v is not None}


def infer_grpc(server: TritonServer, request: Request) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    return client.infer(MODEL, infer_inputs(grpcclient, request.arrays())).as_numpy(schema.SCORES)


def infer_http(server: TritonServer, request: Request) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    return client.infer(MODEL, infer_inputs(httpclient, request.arrays())).as_numpy(schema.SCORES)


def expected_scores(repository: Path, request: Request) -> np.ndarray:
    """The same request through the same weights, in-process and uncached."""
    model = load(repository / "hstu" / "1" / "weights.pt").eval()
    actions = request.actions if request.actions is not None else np.zeros_like(request.history, dtype=np.int32)
    with torch.inference_mode():
        scores = model.score(
            torch.from_numpy(request.history),
            torch.from_numpy(request.timestamps),
            torch.from_numpy(actions.astype(np.int64)),
            torch.from_numpy(request.candidates),
            int(request.timestamps[-1]),
        )
    return scores.numpy()


@pytest.mark.parametrize("infer", [infer_grpc, infer_http], ids=["grpc", "http"])
def test_ranks_candidates_like_the_network_in_process(triton_server, tiny_repository, infer) -> None:
    request = Request()
    scores = infer(triton_server, request)
    model = load(tiny_repository / "hstu" / "1" / "weights.pt")
    assert scores.dtype == np.float32
    assert scores.shape == (4, model.config.num_tasks)
    np.testing.assert_allclose(scores, expected_scores(tiny_repository, request), rtol=1e-4, atol=1e-5)


def test_actions_are_optional(triton_server, tiny_repository) -> None:
    request = Request(actions=None)
    np.testing.assert_allclose(
        infer_grpc(triton_server, request), expected_scores(tiny_repository, request), rtol=1e-4, atol=1e-5
    )


def _bad_requests(max_candidates: int, num_items: int) -> list[tuple[str, Request, str, str]]:
    """(case, request, tensor the error must name, words of the rule)."""
    return [
        ("wrong dtype", Request(history=np.array([3, 9, 4, 27, 11], np.int32)), "HISTORY_ITEM_IDS", "INT64"),
        ("wrong rank", Request(candidates=np.array([[5, 6], [7, 8]], np.int64)), "CANDIDATE_ITEM_IDS", "shape"),
        ("negative id", Request(candidates=np.array([5, -1], np.int64)), "CANDIDATE_ITEM_IDS", f"[0, {num_items}), got [-1"),
        ("id out of range", Request(history=np.array([3, 9, 4, 27, num_items], np.int64)), "HISTORY_ITEM_IDS", f"{num_items}]"),
        ("empty candidates", Request(candidates=np.zeros(0, np.int64)), "CANDIDATE_ITEM_IDS", "at least one"),
        ("length mismatch", Request(timestamps=np.array([1, 2, 3], np.int64)), "HISTORY_TIMESTAMPS", "must equal"),
        (
            "too many candidates",
            Request(candidates=np.arange(max_candidates + 1, dtype=np.int64) % num_items),
            "CANDIDATE_ITEM_IDS",
            f"exceed max_candidates {max_candidates}",
        ),
        (
            "timestamps going back",
            Request(timestamps=np.array([5, 4, 6, 7, 8], np.int64)),
            "HISTORY_TIMESTAMPS",
            "non-decreasing",
        ),
        ("missing user", Request(user_id=None), "USER_ID", ""),
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_malformed_requests_get_invalid_arg_and_server_keeps_serving(triton_server, tiny_repository, protocol) -> None:
    cfg = load(tiny_repository / "hstu" / "1" / "weights.pt").config
    infer = infer_grpc if protocol == "grpc" else infer_http
    for case, request, tensor, rule in _bad_requests(cfg.max_candidates, cfg.num_items):
        with pytest.raises(InferenceServerException) as info:
            infer(triton_server, request)
        message = info.value.message()
        assert tensor in message and rule in message, f"{case}: {message}"
        if protocol == "grpc":
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT", f"{case}: {info.value.status()}"
        else:
            assert info.value.status() == "400", f"{case}: {info.value.status()}"
    # ...and a valid request is still answered.
    assert infer(triton_server, Request()).shape[0] == 4


def test_serve_reports_missing_repository_and_busy_port(tmp_path, triton_server) -> None:
    from helmrec.launcher import LauncherError

    with pytest.raises(LauncherError, match="no such directory"):
        TritonServer(model_repository=tmp_path / "absent").start()
    with pytest.raises(LauncherError, match="already in use"):
        TritonServer(model_repository=tmp_path, grpc_port=int(triton_server.grpc_url.rsplit(":", 1)[1])).start()


def test_bls_deployment_validates_then_ranks_through_the_hstu_model(tiny_repository, tmp_path) -> None:
    """`network: "bls"` (the TensorRT deployment's wiring, here with the Python `hstu`):
    hstu_pool validates, forwards the request to `hstu` by BLS and relays its scores."""
    from helmrec.launcher.repository import stage_repository

    repo = stage_repository(tmp_path / "repo", None, source=tiny_repository, pool_parameters={"network": "bls"})
    request = Request()
    with TritonServer(model_repository=repo) as server:
        np.testing.assert_allclose(infer_grpc(server, request), expected_scores(repo, request), rtol=1e-4, atol=1e-5)
        with pytest.raises(InferenceServerException, match="HISTORY_TIMESTAMPS: must be non-decreasing"):
            infer_grpc(server, Request(timestamps=np.array([5, 4, 6, 7, 8], np.int64)))


def test_a_parameter_missing_from_the_pool_config_stops_the_load_naming_it(tiny_repository, tmp_path) -> None:
    """config.pbtxt is the one source of hstu_pool's settings: there is no default to fall back on."""
    from helmrec.launcher import LauncherError
    from helmrec.launcher.repository import stage_repository

    repo = stage_repository(tmp_path / "repo", None, source=tiny_repository)
    config = repo / schema.POOL_MODEL / "config.pbtxt"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if 'key: "controller"' not in line))
    with pytest.raises(LauncherError, match="config.pbtxt needs parameter 'controller'"):
        TritonServer(model_repository=repo, device="cpu").start()


def test_a_device_memory_cap_is_ignored_on_the_cpu_and_a_bad_one_stops_the_load(tiny_repository, tmp_path) -> None:
    """`device_memory_bytes` caps a GPU's memory: a CPU node logs that it ignores it and serves;
    a cap the pool alone would not fit in stops the load naming the parameter, on any device."""
    from helmrec.launcher import LauncherError
    from helmrec.launcher.repository import stage_repository

    repo = stage_repository(
        tmp_path / "capped", None, source=tiny_repository, pool_parameters={"device_memory_bytes": str(1 << 30)}
    )
    with TritonServer(model_repository=repo, device="cpu") as server:
        np.testing.assert_allclose(infer_grpc(server, Request()), expected_scores(repo, Request()), rtol=1e-4, atol=1e-5)
        assert "parameter 'device_memory_bytes' (1073741824) is ignored on cpu" in server.log()
    repo = stage_repository(tmp_path / "too_small", None, source=tiny_repository, pool_parameters={"device_memory_bytes": "4096"})
    with pytest.raises(LauncherError, match="'device_memory_bytes' \\(4096\\) must exceed pool_bytes"):
        TritonServer(model_repository=repo, device="cpu").start()
