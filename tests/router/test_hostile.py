"""An adversarial client against the router: every malformed or edge request gets a clear error.

Each case sends one hostile request through the router (HTTP or gRPC) and
asserts the status and that the message names the problem (the header, the
parameter, the tensor, the flag or the model); then the router must still
serve a good request over both doors. Compressed requests pass through, an
answer is compressed only when asked, a stalled body is cut off after
--body-timeout, and a stream answers every message, bad ones included.
"""

from __future__ import annotations

import gzip
import json
import queue
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from helmrec.launcher import TritonServer
from helmrec.load.client import infer_inputs
from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.server import RouterThread
from tests.router.planes import DATA_PLANES

pytestmark = pytest.mark.e2e
MODEL = "hstu_ensemble"
SERVICE = "/inference.GRPCInferenceService"
LIMIT = 200_000  # --max-request-bytes of the router under test: a tiny model's requests are far smaller
BODY_TIMEOUT_S = 1.0


def arrays(user: int = 1, history: int = 6, candidates: int = 8) -> dict[str, np.ndarray]:
    pos = np.arange(history, dtype=np.int64)
    return {
        "USER_ID": np.array([user], np.int64),
        "HISTORY_ITEM_IDS": 1 + pos % 250,
        "HISTORY_TIMESTAMPS": 1_700_000_000 + pos * 60,
        "CANDIDATE_ITEM_IDS": 1 + np.arange(candidates, dtype=np.int64) * 7 % 250,
    }


def v2_json(tensors: dict[str, np.ndarray] | None = None, parameters: dict | None = None, **overrides: object) -> bytes:
    """A v2 JSON infer body; `overrides` replace top-level keys (inputs=..., parameters=...)."""
    tensors = arrays() if tensors is None else tensors
    body: dict[str, object] = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": "INT32" if v.dtype == np.int32 else "INT64", "data": v.tolist()}
            for k, v in tensors.items()
        ]
    }
    if parameters is not None:
        body["parameters"] = parameters
    body.update(overrides)
    return json.dumps(body).encode()


def grpc_request(model: str = MODEL, tensors: dict[str, np.ndarray] | None = None, request_id: str = "") -> bytes:
    tensors = arrays() if tensors is None else tensors
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, value in tensors.items():
        tensor = request.inputs.add(name=name, datatype="INT64", shape=list(value.shape))
        del tensor  # values travel as raw_input_contents, like tritonclient sends them
        request.raw_input_contents.append(value.astype(np.int64).tobytes())
    return request.SerializeToString()


# -- one backend, one router ------------------------------------------------------------
@pytest.fixture(scope="module", params=DATA_PLANES)
def front(triton_server: TritonServer, request: pytest.FixtureRequest) -> Iterator[RouterThread]:
    """One router per data plane: every probe must get the same clear error from both."""
    backend = BackendAddress("127.0.0.1", triton_server.grpc_port, triton_server.http_port)
    config = RouterConfig(
        backends=(backend,), max_request_bytes=LIMIT, body_timeout_s=BODY_TIMEOUT_S, data_plane=request.param
    )
    with RouterThread(config) as router:
        yield router


def still_serves(router: RouterThread) -> None:
    """After any probe, both doors answer a good request."""
    good = arrays(user=77)
    grpc_scores = grpcclient.InferenceServerClient(router.server.grpc_url).infer(MODEL, infer_inputs(grpcclient, good))
    http_scores = httpclient.InferenceServerClient(router.server.http_url).infer(MODEL, infer_inputs(httpclient, good))
    assert grpc_scores.as_numpy("SCORES").shape == http_scores.as_numpy("SCORES").shape == (8, 2)


# -- HTTP probes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpProbe:
    name: str
    status: int
    words: tuple[str, ...]  # each must appear in the error message
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: str = f"/v2/models/{MODEL}/infer"
    method: str = "POST"


def _bomb() -> bytes:
    """A gzip body of a few KB that decodes past the limit."""
    return gzip.compress(b'{"inputs": [' + b" " * (5 * LIMIT) + b"]}")


HTTP_PROBES = [
    # Size
    HttpProbe("body over the limit (Content-Length)", 413, ("--max-request-bytes", str(LIMIT)), b"x" * (LIMIT + 1)),
    HttpProbe(
        "gzip bomb over the limit once decoded", 413, ("--max-request-bytes", "gzip"),
        _bomb(), {"Content-Encoding": "gzip"},
    ),
    # Headers
    HttpProbe(
        "Inference-Header-Content-Length '²'", 400, ("Inference-Header-Content-Length", "²"),
        v2_json(), {"Inference-Header-Content-Length": "²"},
    ),
    HttpProbe(
        "Inference-Header-Content-Length '-1'", 400, ("Inference-Header-Content-Length", "-1"),
        v2_json(), {"Inference-Header-Content-Length": "-1"},
    ),
    HttpProbe(
        "Inference-Header-Content-Length 'abc'", 400, ("Inference-Header-Content-Length",),
        v2_json(), {"Inference-Header-Content-Length": "abc"},
    ),
    HttpProbe(
        "Inference-Header-Content-Length past the body", 400, ("Inference-Header-Content-Length", "99999"),
        v2_json(), {"Inference-Header-Content-Length": "99999"},
    ),
    HttpProbe("false Content-Encoding gzip", 400, ("Content-Encoding", "gzip"), v2_json(), {"Content-Encoding": "gzip"}),
    HttpProbe("false Content-Encoding deflate", 400, ("Content-Encoding", "deflate"), v2_json(), {"Content-Encoding": "deflate"}),
    HttpProbe("Content-Encoding br", 400, ("Content-Encoding", "br", "not supported"), v2_json(), {"Content-Encoding": "br"}),
    HttpProbe("Content-Encoding made up", 400, ("Content-Encoding", "rot13"), v2_json(), {"Content-Encoding": "rot13"}),
    HttpProbe("truncated gzip", 400, ("Content-Encoding", "gzip"), gzip.compress(v2_json())[:40], {"Content-Encoding": "gzip"}),
    # Parameters
    HttpProbe("sequence_id a JSON list", 400, ("sequence_id", "[1]"), v2_json(parameters={"sequence_id": [1]})),
    HttpProbe("sequence_id a JSON object", 400, ("sequence_id",), v2_json(parameters={"sequence_id": {"a": 1}})),
    HttpProbe("sequence_id true", 400, ("sequence_id", "true"), v2_json(parameters={"sequence_id": True})),
    HttpProbe("sequence_id 1.5", 400, ("sequence_id", "1.5"), v2_json(parameters={"sequence_id": 1.5})),
    HttpProbe("parameters a JSON list", 400, ("parameters",), v2_json(parameters=[1])),  # type: ignore[arg-type]
    # Bodies
    HttpProbe("body not JSON", 400, ("JSON",), b"{nope"),
    HttpProbe("body empty", 400, ("JSON",), b""),
    HttpProbe("body a JSON list", 400, ("JSON object", "list"), b"[1, 2]"),
    HttpProbe("inputs not a list", 400, ("inputs",), v2_json(inputs={"USER_ID": 1})),
    # Tensors: the backend's own rules, relayed
    HttpProbe(
        "negative candidate id", 400, ("CANDIDATE_ITEM_IDS",),
        v2_json({**arrays(), "CANDIDATE_ITEM_IDS": np.array([3, -1])}),
    ),
    HttpProbe("history past the model's maximum", 400, ("HISTORY_ITEM_IDS",), v2_json(arrays(history=65))),
    HttpProbe("too many candidates", 400, ("CANDIDATE_ITEM_IDS",), v2_json(arrays(candidates=65))),
    HttpProbe("two user ids", 400, ("USER_ID",), v2_json({**arrays(), "USER_ID": np.array([1, 2])})),
    HttpProbe(
        "missing HISTORY_TIMESTAMPS", 400, ("HISTORY_TIMESTAMPS",),
        v2_json({k: v for k, v in arrays().items() if k != "HISTORY_TIMESTAMPS"}),
    ),
    # Models and endpoints the router does not expose
    HttpProbe("infer on internal model hstu", 404, ("'hstu'", "--expose-model"), v2_json(), path="/v2/models/hstu/infer"),
    HttpProbe(
        "infer on internal model hstu_pool", 404, ("'hstu_pool'", "--expose-model"),
        v2_json(), path="/v2/models/hstu_pool/infer",
    ),
    HttpProbe("infer on a versioned internal model", 404, ("'hstu'",), v2_json(), path="/v2/models/hstu/versions/1/infer"),
    HttpProbe("infer on an unknown model", 404, ("'nope'", "--expose-model"), v2_json(), path="/v2/models/nope/infer"),
    HttpProbe("metadata of hstu", 404, ("'hstu'",), path="/v2/models/hstu", method="GET"),
    HttpProbe("config of hstu_pool", 404, ("'hstu_pool'",), path="/v2/models/hstu_pool/config", method="GET"),
    HttpProbe("readiness of hstu", 404, ("'hstu'",), path="/v2/models/hstu/ready", method="GET"),
    HttpProbe("statistics of hstu_pool", 404, ("'hstu_pool'",), path="/v2/models/hstu_pool/stats", method="GET"),
    HttpProbe("log settings", 400, ("/v2/logging", "not supported"), b'{"log_verbose_level": 100}', path="/v2/logging"),
    HttpProbe("shared-memory registration", 400, ("not supported",), b"{}", path="/v2/systemsharedmemory/region/r/register"),
    HttpProbe("model load", 400, ("not supported",), b"{}", path="/v2/repository/models/hstu/load"),
]


def http_call(port: int, probe: HttpProbe) -> tuple[int, str, dict[str, str]]:
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **probe.headers}
        connection.putrequest(probe.method, probe.path, skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value.encode("utf-8"))  # as a client would write '²': UTF-8 bytes
        connection.putheader("Content-Length", str(len(probe.body)))
        connection.endheaders(probe.body)
        response = connection.getresponse()
        payload = response.read()
        text = json.loads(payload).get("error", "") if payload else ""
        return response.status, text, dict(response.getheaders())
    finally:
        connection.close()


@pytest.mark.parametrize("probe", HTTP_PROBES, ids=[p.name for p in HTTP_PROBES])
def test_http_probe_gets_a_clear_error(front: RouterThread, probe: HttpProbe) -> None:
    status, message, _ = http_call(front.server.http_port, probe)  # type: ignore[arg-type]
    assert status == probe.status, (status, message)
    for word in probe.words:
        assert word in message, (word, message)
    still_serves(front)


def test_http_compressed_requests_pass_and_answers_are_compressed_only_when_asked(front: RouterThread) -> None:
    http = httpclient.InferenceServerClient(front.server.http_url)
    inputs = infer_inputs(httpclient, arrays(user=3))
    plain = http.infer(MODEL, inputs).as_numpy("SCORES")
    for algorithm in ("gzip", "deflate"):
        for response_algorithm in (None, algorithm):
            scores = http.infer(
                MODEL, inputs, request_compression_algorithm=algorithm, response_compression_algorithm=response_algorithm
            ).as_numpy("SCORES")
            np.testing.assert_array_equal(scores, plain)
    body = v2_json(arrays(user=3))
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        probe = HttpProbe("compressed", 200, (), compress(body), {"Content-Encoding": encoding})
        status, _, headers = http_call(front.server.http_port, probe)  # type: ignore[arg-type]
        assert status == 200 and "Content-Encoding" not in headers, headers
        asked = HttpProbe("asked", 200, (), body, {"Accept-Encoding": encoding})
        connection = HTTPConnection("127.0.0.1", front.server.http_port, timeout=30)  # type: ignore[arg-type]
        connection.request("POST", asked.path, body=asked.body, headers=asked.headers)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Encoding") == encoding
        decoded = gzip.decompress(response.read()) if encoding == "gzip" else zlib.decompress(response.read())
        assert json.loads(decoded)["model_name"] == MODEL
        connection.close()


def test_http_stalled_body_is_cut_off_after_the_body_timeout(front: RouterThread) -> None:
    with socket.create_connection(("127.0.0.1", front.server.http_port), timeout=30) as sock:  # type: ignore[arg-type]
        start = time.monotonic()
        sock.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n".encode() + b'{"inputs": ['
        )
        answer = b""
        while chunk := sock.recv(65536):  # ends when the router closes the connection
            answer += chunk
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"--body-timeout" in answer and b"1000 bytes" in answer
    assert BODY_TIMEOUT_S <= waited < BODY_TIMEOUT_S + 2, waited
    still_serves(front)


def test_http_oversize_chunked_body_is_refused(front: RouterThread) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(LIMIT // 10_000 + 2):
            yield b" " * 10_000

    connection = HTTPConnection("127.0.0.1", front.server.http_port, timeout=30)  # type: ignore[arg-type]
    connection.request("POST", f"/v2/models/{MODEL}/infer", body=chunks(), encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "--max-request-bytes" in json.loads(response.read())["error"]
    connection.close()
    still_serves(front)


def test_http_metadata_of_the_public_model_still_works_and_statistics_list_only_it(front: RouterThread) -> None:
    http = httpclient.InferenceServerClient(front.server.http_url)
    assert http.is_server_ready() and http.is_model_ready(MODEL)
    assert http.get_model_metadata(MODEL)["name"] == MODEL
    assert http.get_model_config(MODEL)["name"] == MODEL
    assert {m["name"] for m in http.get_inference_statistics()["model_stats"]} == {MODEL}
    assert [m["name"] for m in http.get_inference_statistics(MODEL)["model_stats"]] == [MODEL]


# -- gRPC probes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GrpcProbe:
    name: str
    method: str
    raw: bytes
    code: grpc.StatusCode
    words: tuple[str, ...]


def _missing(name: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays().items() if k != name}


GRPC_PROBES = [
    GrpcProbe(
        "undecodable ModelInfer", "ModelInfer", b"\xff\xff\xff",
        grpc.StatusCode.INVALID_ARGUMENT, ("ModelInferRequest", "decoded"),
    ),
    GrpcProbe(
        "message over the limit", "ModelInfer",
        grpc_request(tensors={**arrays(), "CANDIDATE_ITEM_IDS": np.arange(LIMIT // 8 + 1)}),
        grpc.StatusCode.RESOURCE_EXHAUSTED, ("larger than max",),
    ),
    GrpcProbe("infer on hstu", "ModelInfer", grpc_request("hstu"), grpc.StatusCode.NOT_FOUND, ("'hstu'", "--expose-model")),
    GrpcProbe(
        "infer on hstu_pool", "ModelInfer", grpc_request("hstu_pool"),
        grpc.StatusCode.NOT_FOUND, ("'hstu_pool'", "--expose-model"),
    ),
    GrpcProbe("infer on an unknown model", "ModelInfer", grpc_request("nope"), grpc.StatusCode.NOT_FOUND, ("'nope'",)),
    GrpcProbe("infer with no model name", "ModelInfer", grpc_request(""), grpc.StatusCode.NOT_FOUND, ("''", "--expose-model")),
    GrpcProbe(
        "metadata of hstu", "ModelMetadata", service_pb2.ModelMetadataRequest(name="hstu").SerializeToString(),
        grpc.StatusCode.NOT_FOUND, ("'hstu'",),
    ),
    GrpcProbe(
        "config of hstu_pool", "ModelConfig", service_pb2.ModelConfigRequest(name="hstu_pool").SerializeToString(),
        grpc.StatusCode.NOT_FOUND, ("'hstu_pool'",),
    ),
    GrpcProbe(
        "readiness of hstu", "ModelReady", service_pb2.ModelReadyRequest(name="hstu").SerializeToString(),
        grpc.StatusCode.NOT_FOUND, ("'hstu'",),
    ),
    GrpcProbe(
        "statistics of hstu_pool", "ModelStatistics", service_pb2.ModelStatisticsRequest(name="hstu_pool").SerializeToString(),
        grpc.StatusCode.NOT_FOUND, ("'hstu_pool'",),
    ),
    GrpcProbe(
        "undecodable metadata request", "ModelMetadata", b"\xff\xff",
        grpc.StatusCode.INVALID_ARGUMENT, ("ModelMetadata", "decoded"),
    ),
    GrpcProbe("log settings", "LogSettings", b"", grpc.StatusCode.UNIMPLEMENTED, ("LogSettings", "not supported")),
    GrpcProbe(
        "shared-memory registration", "SystemSharedMemoryRegister", b"",
        grpc.StatusCode.UNIMPLEMENTED, ("SystemSharedMemoryRegister",),
    ),
    GrpcProbe("model load", "RepositoryModelLoad", b"", grpc.StatusCode.UNIMPLEMENTED, ("RepositoryModelLoad",)),
    GrpcProbe("repository index", "RepositoryIndex", b"", grpc.StatusCode.UNIMPLEMENTED, ("RepositoryIndex", "admin")),
    GrpcProbe(
        "negative candidate id", "ModelInfer", grpc_request(tensors={**arrays(), "CANDIDATE_ITEM_IDS": np.array([3, -1])}),
        grpc.StatusCode.INVALID_ARGUMENT, ("CANDIDATE_ITEM_IDS",),
    ),
    GrpcProbe(
        "history past the model's maximum", "ModelInfer", grpc_request(tensors=arrays(history=65)),
        grpc.StatusCode.INVALID_ARGUMENT, ("HISTORY_ITEM_IDS",),
    ),
    GrpcProbe(
        "missing HISTORY_TIMESTAMPS", "ModelInfer", grpc_request(tensors=_missing("HISTORY_TIMESTAMPS")),
        grpc.StatusCode.INVALID_ARGUMENT, ("HISTORY_TIMESTAMPS",),
    ),
]


@pytest.mark.parametrize("probe", GRPC_PROBES, ids=[p.name for p in GRPC_PROBES])
def test_grpc_probe_gets_a_clear_error(front: RouterThread, probe: GrpcProbe) -> None:
    with grpc.insecure_channel(front.server.grpc_url) as channel:
        call = channel.unary_unary(f"{SERVICE}/{probe.method}")
        with pytest.raises(grpc.RpcError) as info:
            call(probe.raw, timeout=30)
    assert info.value.code() == probe.code, info.value
    for word in probe.words:
        assert word in info.value.details(), (word, info.value.details())
    still_serves(front)


def test_grpc_statistics_list_only_the_public_model(front: RouterThread) -> None:
    client = grpcclient.InferenceServerClient(front.server.grpc_url)
    assert [m.name for m in client.get_inference_statistics().model_stats] == [MODEL]
    assert client.is_model_ready(MODEL) and client.get_model_metadata(MODEL).name == MODEL


# -- streams: every message answered -----------------------------------------------------------
@pytest.mark.parametrize("bad_at", [0, 2, 4])
@pytest.mark.parametrize("bad", ["undecodable", "internal model", "unknown model"])
def test_stream_answers_all_five_messages_with_a_bad_one_among_them(front: RouterThread, bad: str, bad_at: int) -> None:
    """Raw bytes over ModelStreamInfer (a stock client cannot write undecodable ones): 5 in, 5 out."""
    bad_raw = {
        "undecodable": b"\xff\xff\xff",
        "internal model": grpc_request("hstu_pool", request_id="bad"),
        "unknown model": grpc_request("nope", request_id="bad"),
    }[bad]
    messages = [grpc_request(request_id=str(i), tensors=arrays(user=10 + i)) for i in range(5)]
    messages[bad_at] = bad_raw
    with grpc.insecure_channel(front.server.grpc_url) as channel:
        answers = [
            service_pb2.ModelStreamInferResponse.FromString(raw)
            for raw in channel.stream_stream(f"{SERVICE}/ModelStreamInfer")(iter(messages), timeout=60)
        ]
    assert len(answers) == 5, answers
    errors = [a.error_message for a in answers if a.error_message]
    assert len(errors) == 1, errors
    expected = {"undecodable": "INVALID_ARGUMENT", "internal model": "NOT_FOUND", "unknown model": "NOT_FOUND"}[bad]
    assert expected in errors[0] and ("cannot be decoded" in errors[0] or "--expose-model" in errors[0]), errors[0]
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == sorted(str(i) for i in range(5) if i != bad_at)


def test_stock_stream_client_sees_the_refusal_and_the_stream_goes_on(front: RouterThread) -> None:
    client = grpcclient.InferenceServerClient(front.server.grpc_url)
    answers: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error if error is not None else result))
    try:
        for i in range(5):
            model = "hstu" if i == 2 else MODEL
            client.async_stream_infer(model, infer_inputs(grpcclient, arrays(user=20 + i)), request_id=str(i))
        got = [answers.get(timeout=60) for _ in range(5)]
    finally:
        client.stop_stream()
    errors = [g for g in got if isinstance(g, InferenceServerException)]
    assert len(errors) == 1 and "'hstu'" in errors[0].message() and "--expose-model" in errors[0].message()
    assert sorted(g.get_response().id for g in got if not isinstance(g, InferenceServerException)) == ["0", "1", "3", "4"]


# -- the same HTTP probes straight at tritonserver, for comparison -----------------------------
DIRECT = [p for p in HTTP_PROBES if p.path == f"/v2/models/{MODEL}/infer" and p.status == 400]


def test_tritonserver_directly_refuses_the_same_probes_but_not_always_clearly(
    front: RouterThread, triton_server: TritonServer
) -> None:
    """No probe gets a 2xx or takes the server down; the table shows where the router is clearer."""
    rows = []
    for probe in DIRECT:
        status, message, _ = http_call(triton_server.http_port, probe)  # type: ignore[arg-type]
        routed, routed_message, _ = http_call(front.server.http_port, probe)  # type: ignore[arg-type]
        rows.append(f"{probe.name[:44]:44s} direct {status} | router {routed}  {routed_message[:70]}")
        assert status >= 400 and routed == 400, (probe.name, status, message)
    print("\n" + "\n".join(rows))
    assert httpclient.InferenceServerClient(f"127.0.0.1:{triton_server.http_port}").is_server_ready()
