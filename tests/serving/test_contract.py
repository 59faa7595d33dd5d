"""The public contract in one place: the config.pbtxt files cannot import Python, so these
tests hold them to helmrec.schema's signatures, and the schema stays cheap to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from helmrec import schema
from helmrec.resources import model_repository


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def declared(tensors) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in tensors]


def expected(specs: tuple[schema.TensorSpec, ...]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(t.name, f"TYPE_{t.dtype}", t.dims) for t in specs]


@pytest.mark.parametrize("model", sorted(schema.SIGNATURES))
def test_each_config_declares_exactly_the_schema_signature(model: str) -> None:
    config = parse(model_repository() / model / "config.pbtxt")
    signature = schema.SIGNATURES[model]
    assert config.name == model
    assert declared(config.input) == expected(signature.inputs)
    assert declared(config.output) == expected(signature.outputs)
    for spec, tensor in zip(signature.inputs, config.input):
        # A required input may be declared optional (validate then names it when missing);
        # an optional one declared required would refuse requests the contract accepts.
        assert tensor.optional or spec.required, f"{model}: {spec.name} is optional in the contract"


def test_the_ensemble_hands_every_public_tensor_to_the_pool_unrenamed() -> None:
    (step,) = parse(model_repository() / schema.ENSEMBLE_MODEL / "config.pbtxt").ensemble_scheduling.step
    assert step.model_name == schema.POOL_MODEL
    assert dict(step.input_map) == {name: name for name in schema.PUBLIC_INPUTS}
    assert dict(step.output_map) == {schema.SCORES: schema.SCORES}


def test_a_built_request_carries_the_declared_dtypes() -> None:
    arrays = schema.ensemble_request(7, np.arange(3), np.arange(3), np.arange(2), np.zeros(3))
    assert {name: a.dtype for name, a in arrays.items()} == {t.name: t.numpy_dtype for t in schema.ENSEMBLE.inputs}
    assert schema.HISTORY_ACTIONS not in schema.ensemble_request(7, np.arange(3), np.arange(3), np.arange(2))


@pytest.mark.parametrize("module", ["helmrec.schema", "helmrec.router.request_features"])
def test_the_contract_imports_without_torch(module: str) -> None:
    """The router and Locust import the names on every start; torch would add seconds to it."""
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
