"""The router is the guarded front door: an oversize request is refused before it is buffered.

The default limit is the largest valid request of the largest preset, written
as JSON; an operator sizes it from the served model's limits or sets it. A
`helmrec route` process hit by 200 MB bodies and messages (HTTP with a
Content-Length, HTTP chunked, gRPC) refuses each with 413 / RESOURCE_EXHAUSTED,
and stays within 64 MB of its starting RSS over four rounds of them (4 GB sent).
RSS does not drop back exactly: glibc keeps freed heap up to its trim
threshold (seen 6-25 MB here; with MALLOC_TRIM_THRESHOLD_=131072 it drops back
to within a few MB), so the test bounds the growth instead of asking for a return.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from helmrec.hstu.config import PRESETS
from helmrec.launcher import TritonServer, free_port
from helmrec.router.cli import add_arguments, config_from_args
from helmrec.router.config import ConfigError
from helmrec.router.limits import DEFAULT_MAX_REQUEST_BYTES, MAX_CANDIDATES, MAX_HISTORY_LEN, request_bytes_bound

OVERSIZE = 200 * 2**20


def test_default_limit_fits_the_largest_preset_in_its_most_verbose_form() -> None:
    assert MAX_HISTORY_LEN == max(c.max_seq_len for c in PRESETS.values())
    assert MAX_CANDIDATES == max(c.max_candidates for c in PRESETS.values())
    ids = 1 + 3 * MAX_HISTORY_LEN + MAX_CANDIDATES
    widest = ", ".join(["-9223372036854775808"] * ids)
    assert len(widest) < DEFAULT_MAX_REQUEST_BYTES < 2 * len(widest)


def _config(*flags: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["--backend=127.0.0.1:1", *flags]))


def test_flags_size_the_limit_from_the_models_limits_or_set_it() -> None:
    assert _config().max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    assert _config("--max-history=200", "--max-candidates=128").max_request_bytes == request_bytes_bound(200, 128)
    assert _config("--max-history=200", "--max-request-bytes=5000").max_request_bytes == 5000
    assert _config().exposed_models == ("hstu_ensemble",)
    assert _config("--expose-model=hstu_ensemble", "--expose-model=hstu").exposed_models == ("hstu_ensemble", "hstu")
    with pytest.raises(ConfigError, match="--max-history"):
        _config("--max-history=0")
    with pytest.raises(ConfigError, match="--max-request-bytes 0"):
        _config("--max-request-bytes=0")


# -- memory of a router process under oversize requests ---------------------------------------
def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def _http_oversize(port: int, chunked: bool) -> bytes:
    """Send a 200 MB body (1 MB buffer reused); return the status line the router answered."""
    block = b" " * 2**20
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {OVERSIZE}"
        sock.sendall(f"POST /v2/models/hstu_ensemble/infer HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode())
        try:
            for _ in range(OVERSIZE // len(block)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
        except OSError:  # the router answered and closed while we were still sending
            pass
        return sock.recv(4096).split(b"\r\n", 1)[0]


def _grpc_oversize(url: str) -> grpc.StatusCode:
    with grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1)]) as channel:
        try:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\x0a" + b"\x00" * OVERSIZE, timeout=60)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def _oversize_round(pid: int, grpc_port: int, http_port: int) -> tuple[list[object], int]:
    """Send 4 oversize HTTP bodies and 1 oversize gRPC message at once; return the answers and the RSS after."""
    answers: list[object] = []
    senders = [
        threading.Thread(target=lambda c=c: answers.append(_http_oversize(http_port, c))) for c in (False, True) * 2
    ] + [threading.Thread(target=lambda: answers.append(_grpc_oversize(f"127.0.0.1:{grpc_port}")))]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    time.sleep(1.0)
    return answers, _rss_kib(pid)


@pytest.mark.e2e
def test_router_memory_stays_bounded_under_rounds_of_oversize_requests(triton_server: TritonServer) -> None:
    grpc_port, http_port = free_port(), free_port()
    backend = f"--backend=127.0.0.1:{triton_server.grpc_port},http={triton_server.http_port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "helmrec.cli", "route", backend, f"--grpc-port={grpc_port}", f"--http-port={http_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None and "router ready" in proc.stdout.readline()
        time.sleep(1.0)
        baseline = _rss_kib(proc.pid)
        peak = 0

        def watch(stop: threading.Event) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _rss_kib(proc.pid))
                time.sleep(0.01)

        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(stop,))
        watcher.start()
        rounds = [_oversize_round(proc.pid, grpc_port, http_port) for _ in range(4)]
        time.sleep(2.0)
        stop.set()
        watcher.join()
        after = _rss_kib(proc.pid)
        print(
            f"\nrouter RSS, 4 rounds of 4 x 200 MB HTTP bodies + 1 x 200 MB gRPC message at once: before "
            f"{baseline / 1024:.1f} MB, after each round {[round(r[1] / 1024, 1) for r in rounds]} MB, peak during "
            f"{peak / 1024:.1f} MB, after {after / 1024:.1f} MB"
        )
        for answers, _ in rounds:
            assert answers.count(b"HTTP/1.1 413 Request Entity Too Large") == 4, answers
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in answers, answers
        assert peak < baseline + 64 * 1024, "the router buffered an oversize request or kept what it read"
    finally:
        proc.terminate()
        proc.wait(30)
