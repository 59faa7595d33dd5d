"""User story: an operator runs `helmrec serve`, sees the endpoints, stops it with
SIGTERM or Ctrl-C and finds no server left behind; mistakes get one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helmrec.launcher import free_port

pytestmark = pytest.mark.e2e


def helmrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "helmrec.cli", *args]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_prints_endpoints_and_stops_cleanly(tiny_repository: Path, sig: signal.Signals) -> None:
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen(
        helmrec("serve", "--model-repository", str(tiny_repository), "--device", "cpu",
                "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(4)]  # type: ignore[union-attr]
        assert lines[0].startswith("tritonserver ready"), lines
        pid = int(lines[0].split("pid ")[1].split(",")[0])
        assert f"127.0.0.1:{ports[1]}" in lines[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "tritonserver stopped" in out
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-repository", "/nonexistent/repo"], "no such directory"),
        (["--model-repository", ".", "--tritonserver", "/nonexistent/tritonserver"], "no executable file there"),
    ],
)
def test_serve_mistakes_get_one_clear_line(args: list[str], message: str) -> None:
    done = subprocess.run(helmrec("serve", *args), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
