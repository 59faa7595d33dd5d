"""User story: an operator binds `helmrec serve` beyond loopback; clients can infer,
check health and read metadata, but only a client with the operator's header can
change log settings, register shared memory, load models or change tracing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from helmrec.launcher import AdminHeader, TritonServer
from helmrec.launcher.cli import _admin_header
from helmrec.load.client import infer_inputs

ADMIN = AdminHeader("ops-key", "s3cret")
REFUSED = r"This (API|protocol) is restricted, expecting header"
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def server(tiny_repository: Path) -> Iterator[TritonServer]:
    """Explicit model control, so a model load with the header can succeed at all."""
    extra = ("--model-control-mode=explicit", "--load-model=*")
    with TritonServer(model_repository=tiny_repository, device="cpu", admin=ADMIN, extra_args=extra) as s:
        yield s


@pytest.fixture(scope="module")
def region() -> Iterator[str]:
    """A real system shared-memory region for a client to register."""
    key = f"/admin_probe_{os.getpid()}"
    handle = shm.create_shared_memory_region("admin_probe", key, 64)
    yield key
    shm.destroy_shared_memory_region(handle)


def client(server: TritonServer, protocol: str) -> Any:
    module = PROTOCOLS[protocol]
    return module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)


def headers(protocol: str) -> dict[str, str]:
    return ADMIN.http_headers() if protocol == "http" else ADMIN.grpc_headers()


# Each: a state-changing call (taking headers=) and its undo, if it changed something.
CHANGES: dict[str, tuple[Callable[[Any, str, dict[str, str]], Any], Callable[[Any, str, dict[str, str]], Any] | None]] = {
    "log settings": (
        lambda c, _r, h: c.update_log_settings({"log_verbose_level": 1}, headers=h),
        lambda c, _r, h: c.update_log_settings({"log_verbose_level": 0}, headers=h),
    ),
    "shm registration": (
        lambda c, r, h: c.register_system_shared_memory("admin_probe", r, 64, headers=h),
        lambda c, _r, h: c.unregister_system_shared_memory("admin_probe", headers=h),
    ),
    "model load": (lambda c, _r, h: c.load_model("hstu", headers=h), None),
    "trace settings": (
        lambda c, _r, h: c.update_trace_settings(settings={"trace_rate": "500"}, headers=h),
        lambda c, _r, h: c.update_trace_settings(settings={"trace_rate": "1000"}, headers=h),
    ),
}


@pytest.mark.e2e
@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_state_changes_need_the_operators_header(server: TritonServer, region: str, protocol: str, change: str) -> None:
    do, undo = CHANGES[change]
    c = client(server, protocol)
    with pytest.raises(InferenceServerException, match=REFUSED):
        do(c, region, {})
    with pytest.raises(InferenceServerException, match=REFUSED):  # a wrong value is no better
        do(c, region, {name: "guess" for name in headers(protocol)})
    do(c, region, headers(protocol))
    if undo is not None:
        undo(c, region, headers(protocol))


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inference_health_and_metadata_stay_open(server: TritonServer, protocol: str) -> None:
    module: ModuleType = PROTOCOLS[protocol]
    c = client(server, protocol)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("hstu_ensemble")
    assert c.get_model_metadata("hstu_ensemble") and c.get_model_config("hstu_ensemble")
    assert c.get_inference_statistics("hstu_ensemble")
    pos = np.arange(6, dtype=np.int64)
    arrays = {
        "USER_ID": np.array([1], np.int64),
        "HISTORY_ITEM_IDS": 1 + pos,
        "HISTORY_TIMESTAMPS": 1_700_000_000 + pos * 60,
        "HISTORY_ACTIONS": (pos % 2).astype(np.int32),
        "CANDIDATE_ITEM_IDS": np.arange(1, 9, dtype=np.int64),
    }
    scores = c.infer("hstu_ensemble", infer_inputs(module, arrays)).as_numpy("SCORES")
    assert scores.shape[0] == 8 and np.isfinite(scores).all()


# -- choosing the header -----------------------------------------------------------------
def test_header_comes_from_the_flag_then_the_environment_else_is_random(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELMREC_ADMIN_HEADER", "env-key=from-env")
    assert _admin_header("flag-key=from-flag") == AdminHeader("flag-key", "from-flag")
    assert _admin_header(None) == AdminHeader("env-key", "from-env")
    monkeypatch.delenv("HELMREC_ADMIN_HEADER")
    assert _admin_header(None) is None
    first, second = AdminHeader.random(), AdminHeader.random()
    assert first.value != second.value and len(first.value) >= 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no-equals-sign", "expected NAME=VALUE"),
        ("Upper=x", "lowercase"),
        ("key=a:b", "only letters, digits"),
        ("key=", "only letters, digits"),
    ],
)
def test_a_bad_admin_header_gets_one_clear_line(text: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "helmrec.cli", "serve", "--model-repository", ".", "--admin-header", text],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--admin-header" in done.stderr and message in done.stderr and "Traceback" not in done.stderr
