"""User story: the operator lets `helmrec serve` pick its ports (port 0). Another
process binds one of them between the pick and tritonserver's bind: the launcher
picks again, and the server it hands back answers on all three, metrics included
(Triton itself only logs a taken metrics port and serves on without metrics, which
the router's load guard reads)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import helmrec.launcher.server as launcher_server
from helmrec.launcher import TritonServer

pytestmark = pytest.mark.e2e
KINDS = ("http", "grpc", "metrics")


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port some other process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# gRPC fails the start like HTTP does (the same path in the launcher); metrics does not.
@pytest.mark.parametrize("kind", ["http", "metrics"])
def test_a_port_taken_after_the_pick_is_picked_again(
    tiny_repository: Path, listener: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks: list[int] = []
    first_pick_of_kind = KINDS.index(kind)

    def pick(host: str = "127.0.0.1") -> int:
        port = listener if len(picks) == first_pick_of_kind else socket_port(host)
        picks.append(port)
        return port

    socket_port = launcher_server.free_port
    monkeypatch.setattr(launcher_server, "free_port", pick)
    with TritonServer(model_repository=tiny_repository, device="cpu") as server:
        assert len(picks) == 2 * len(KINDS), f"expected one retry, picks {picks}"
        assert listener not in (server.http_port, server.grpc_port, server.metrics_port)
        with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:  # noqa: S310 - loopback
            assert b"nv_inference_request_success" in resp.read()
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
