"""ONNX graphs match PyTorch under onnxruntime; the TensorRT step says so when TensorRT is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from helmrec import schema
from helmrec.cli import main
from helmrec.hstu import engine
from helmrec.hstu.config import preset
from helmrec.hstu.export import check_onnx, export_onnx, graph_specs
from helmrec.hstu.model import HSTU
from helmrec.hstu.weights import save
from helmrec.model_config import get_parameter

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save(HSTU(preset("tiny")).eval(), tmp_path_factory.mktemp("hstu") / "weights.pt")


def test_onnx_graphs_match_pytorch_at_several_lengths(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = HSTU(preset("tiny")).eval()
    paths = export_onnx(model, tmp_path)
    assert sorted(paths) == ["hstu", "hstu_prefill", "hstu_rank"]
    cfg = model.config
    worst = check_onnx(model, paths, [(1, 1), (2, 5), (23, 9), (cfg.max_seq_len, cfg.max_candidates)])
    assert max(worst.values()) < 1e-5, worst


def test_build_engine_without_tensorrt_says_so_and_fails(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if engine.tensorrt_available():
        pytest.skip("TensorRT is installed here: the absent-builder path cannot be exercised")
    code = main(["build-engine", "--weights", str(tiny_weights), "--out", str(tmp_path / "trt")])
    assert code == engine.NO_TENSORRT
    assert "TensorRT builder is absent" in capsys.readouterr().out
    assert not (tmp_path / "trt").exists()


def test_tensorrt_repository_configs_parse_and_switch_pool_to_bls(tiny_weights: Path, tmp_path: Path) -> None:
    cfg = preset("tiny")
    repo = tmp_path / "model_repository_trt"
    engine.write_repository(cfg, tiny_weights, repo)
    for spec in graph_specs(cfg):
        parsed = text_format.Parse((repo / spec.name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert parsed.name == spec.name and parsed.platform == "tensorrt_plan"
        assert [i.name for i in parsed.input] == [t.name for t in spec.inputs]
    hstu = text_format.Parse((repo / schema.NETWORK_MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert list(hstu.output[0].dims) == [-1, cfg.num_tasks]
    # The engine takes what the Python `hstu` takes, so hstu_pool's BLS call is the same for both.
    declared = [(t.name, model_config_pb2.DataType.Name(t.data_type)) for t in hstu.input]
    assert declared == [(t.name, f"TYPE_{t.dtype}") for t in schema.NETWORK.inputs]
    assert (repo / schema.NETWORK_MODEL / "1" / "weights.pt").is_file()
    assert get_parameter(repo / schema.POOL_MODEL / "config.pbtxt", "network") == "bls"


def test_profiles_span_the_configured_lengths() -> None:
    cfg = preset("large")
    lengths = engine.typical_lengths(cfg)
    rank = next(s for s in graph_specs(cfg) if s.name == "hstu_rank")
    kv_min, kv_opt, kv_max = engine.profile_shapes(rank.inputs[0], lengths)
    assert kv_min == (5, 1, 1024) and kv_max == (5, 16384, 1024) and kv_opt[1] == 4096
