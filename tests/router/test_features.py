"""The router reads routing features from requests exactly as stock tritonclient
builds them (gRPC raw contents, HTTP JSON and binary tensors), finds sequence
parameters, and never fails on requests it cannot read."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from helmrec import schema
from helmrec.load.client import infer_inputs
from helmrec.router.config import BackendAddress, ConfigError, RouterConfig
from helmrec.router.dispatch import Dispatcher
from helmrec.router.request_features import from_grpc, from_http

ARRAYS = schema.ensemble_request(
    42, np.array([3, 9, 4, 27, 11]), np.arange(1, 6), np.array([5, 6, 42, 8]), np.array([1, 0, 1, 1, 0])
)


def grpc_request(raw: bool = True, sequence_id: int | str = 0) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=schema.ENSEMBLE_MODEL)
    for name, value in ARRAYS.items():
        datatype = "INT64" if value.dtype == np.int64 else "INT32"
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        if raw:
            request.raw_input_contents.append(value.tobytes())
        elif datatype == "INT64":
            tensor.contents.int64_contents.extend(value.tolist())
        else:
            tensor.contents.int_contents.extend(value.tolist())
    if isinstance(sequence_id, str) and sequence_id:
        request.parameters["sequence_id"].string_param = sequence_id
    elif sequence_id:
        request.parameters["sequence_id"].int64_param = sequence_id
        request.parameters["sequence_end"].bool_param = True
    return request


@pytest.mark.parametrize("raw", [True, False], ids=["raw_contents", "typed_contents"])
def test_grpc_features(raw: bool) -> None:
    features = from_grpc(grpc_request(raw))
    assert features.route.user_id == 42 and features.route.history_len == 5
    np.testing.assert_array_equal(features.route.candidates, ARRAYS[schema.CANDIDATE_ITEM_IDS])
    assert features.sequence is None


@pytest.mark.parametrize("raw", [True, False], ids=["raw_contents", "typed_contents"])
def test_candidates_are_left_unread_for_policies_that_do_not_use_them(raw: bool) -> None:
    features = from_grpc(grpc_request(raw), candidates=False)
    assert features.route.user_id == 42 and features.route.history_len == 5 and len(features.route.candidates) == 0
    backends = (BackendAddress("127.0.0.1", 1),)
    assert not Dispatcher(RouterConfig(backends=backends, policy="helm")).reads_candidates
    assert Dispatcher(RouterConfig(backends=backends, policy="emb_aware")).reads_candidates


def test_a_negative_or_unsigned_user_id_reads_as_its_value() -> None:
    request = grpc_request()
    request.raw_input_contents[0] = np.array([-5], np.int64).tobytes()
    assert from_grpc(request).route.user_id == -5
    request.inputs[0].datatype = "UINT64"
    request.raw_input_contents[0] = np.array([2**64 - 1], np.uint64).tobytes()
    assert from_grpc(request).route.user_id == 2**64 - 1


def test_grpc_sequence_parameters_make_a_request_sticky() -> None:
    features = from_grpc(grpc_request(sequence_id=17))
    assert features.sequence == (schema.ENSEMBLE_MODEL, 17) and features.sequence_end
    assert from_grpc(grpc_request(sequence_id="s-1")).sequence == (schema.ENSEMBLE_MODEL, "s-1")


def test_unreadable_grpc_tensors_route_without_features() -> None:
    request = grpc_request()
    request.raw_input_contents[0] = b"\x01\x02\x03"  # not a whole INT64
    assert from_grpc(request).route.user_id is None
    assert from_grpc(service_pb2.ModelInferRequest()).route.user_id is None


@pytest.mark.parametrize("binary", [True, False], ids=["binary_tensors", "json"])
def test_http_features(binary: bool) -> None:
    inputs = infer_inputs(httpclient, ARRAYS, binary_data=binary)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, sequence_id=9)
    features = from_http(schema.ENSEMBLE_MODEL, body, header_length)
    assert features.route.user_id == 42 and features.route.history_len == 5
    np.testing.assert_array_equal(features.route.candidates, ARRAYS[schema.CANDIDATE_ITEM_IDS])
    assert features.sequence == (schema.ENSEMBLE_MODEL, 9)


def test_unreadable_http_body_routes_without_features() -> None:
    assert from_http("m", b"{not json", None).route.user_id is None
    assert from_http("m", b'{"inputs": 5}', None).route.user_id is None


def test_backend_specs_parse_and_bad_ones_name_the_rule() -> None:
    b = BackendAddress.parse("127.0.0.1:8001,http=8000,metrics=8002")
    assert (b.grpc_target, b.http_base, b.metrics_url) == (
        "127.0.0.1:8001",
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8002/metrics",
    )
    for spec, words in [
        ("8001", "expected HOST:GRPC_PORT"),
        ("h:99999", "grpc port must be an integer in 1..65535"),
        ("h:1,web=3", "unknown option 'web=3'"),
        ("h:1,http=2,http=3", "http= given twice"),
    ]:
        with pytest.raises(ConfigError, match=words):
            BackendAddress.parse(spec)
    with pytest.raises(ConfigError, match="--policy 'fastest'"):
        RouterConfig(backends=(b,), policy="fastest")
    with pytest.raises(ConfigError, match="same HOST:GRPC_PORT is given twice"):
        RouterConfig(backends=(b, b))
