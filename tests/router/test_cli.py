"""An operator who mistypes `helmrec route` gets a message naming the flag, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys


def route(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helmrec.cli", "route", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_backend_spec_and_busy_ports_are_named() -> None:
    bad = route("--backend=localhost")
    assert bad.returncode == 2 and "--backend 'localhost': expected HOST:GRPC_PORT" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        grpc_busy = route("--backend=127.0.0.1:1", f"--grpc-port={port}", "--http-port=-1")
        assert grpc_busy.returncode == 1 and f"--grpc-port {port}: cannot bind" in grpc_busy.stderr
        http_busy = route("--backend=127.0.0.1:1", "--grpc-port=0", f"--http-port={port}")
        assert http_busy.returncode == 1 and f"--http-port {port}: cannot bind" in http_busy.stderr


def test_workers_need_fixed_ports_and_free_ones() -> None:
    zero = route("--backend=127.0.0.1:1", "--workers=2", "--grpc-port=0", "--http-port=-1")
    assert zero.returncode == 2 and "--workers 2: needs fixed --grpc-port and --http-port" in zero.stderr
    with socket.socket() as busy:  # another router's worker: it too allows SO_REUSEPORT
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # SO_REUSEPORT would share a port silently with another process of ours: the parent checks first.
        taken = route("--backend=127.0.0.1:1", "--workers=2", f"--grpc-port={port}", "--http-port=-1")
        assert taken.returncode == 1 and f"--grpc-port {port}: cannot bind" in taken.stderr
