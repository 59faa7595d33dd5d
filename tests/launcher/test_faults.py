"""User story: whatever dies - tritonserver under load, or the `helmrec serve` wrapper
itself, both by SIGKILL - the operator finds no server, no Python-backend stub and no
/dev/shm region of it left, and the ports free, within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helmrec.launcher import TritonServer, orphans
from helmrec.load.client import infer_inputs

pytestmark = pytest.mark.e2e
GONE_WITHIN_S = 5.0


# -- what is left of a server ----------------------------------------------------------
def group_members(pgid: int) -> set[int]:
    """Live processes in process group `pgid` (the server and its stubs); zombies hold nothing."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def regions(prefix: str) -> list[str]:
    return sorted(p.name for p in orphans.SHM.glob(f"{prefix}*"))


def port_free(port: int) -> bool:
    """Nothing listens there: a restarted server could bind it (connections the killed
    server reset linger in TIME_WAIT, which SO_REUSEADDR lets a new listener ignore)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def seconds_until(condition, limit_s: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    """How long until `condition()` held (polled every 50 ms); `limit_s` if it never did."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if condition():
            return time.monotonic() - t0
        time.sleep(0.05)
    return limit_s


# -- load ------------------------------------------------------------------------------
def request(user: int, length: int) -> dict[str, np.ndarray]:
    pos = np.arange(length, dtype=np.int64)
    return {
        "USER_ID": np.array([user], np.int64),
        "HISTORY_ITEM_IDS": 1 + (user * 7919 + pos * 104729) % 299,
        "HISTORY_TIMESTAMPS": 1_700_000_000 + pos * 60,
        "HISTORY_ACTIONS": ((user + pos) % 2).astype(np.int32),
        "CANDIDATE_ITEM_IDS": 1 + (user * 31 + np.arange(16, dtype=np.int64) * 17) % 299,
    }


@contextmanager
def under_load(grpc_url: str, clients: int = 3) -> Iterator[None]:
    """`clients` threads sending requests back to back; entered once 10 were answered."""
    stop = threading.Event()
    answered = threading.Semaphore(0)

    def client(n: int) -> None:
        c = grpcclient.InferenceServerClient(grpc_url)
        i = 0
        while not stop.is_set():
            try:
                c.infer("hstu_ensemble", infer_inputs(grpcclient, request(100 * n + i % 20, 8 + i % 32)))
                answered.release()
            except Exception:  # noqa: BLE001 - the server is being killed; errors are expected
                time.sleep(0.05)
            i += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            assert answered.acquire(timeout=120), "the server answered fewer than 10 requests"
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


# -- tritonserver killed ---------------------------------------------------------------
@pytest.mark.parametrize("trial", range(3))
def test_server_killed_under_load_leaves_no_stub_and_no_region(tiny_repository: Path, trial: int) -> None:
    server = TritonServer(model_repository=tiny_repository, device="cpu").start()
    pid, prefix = server.pid, server.region_prefix
    assert pid is not None and prefix is not None
    try:
        stubs = group_members(pid) - {pid}
        assert len(stubs) >= 2 and regions(prefix), "expected the hstu and hstu_pool stubs and their regions"
        with under_load(server.grpc_url):
            os.kill(pid, signal.SIGKILL)
            took = seconds_until(lambda: not group_members(pid) and not regions(prefix))
        assert took < GONE_WITHIN_S, f"left after {took:.1f} s: {group_members(pid)} {regions(prefix)}"
        print(f"\ntrial {trial}: {len(stubs)} stubs and their regions gone {took:.2f} s after kill -9 of the server")
    finally:
        code = server.stop()
    assert code == -signal.SIGKILL


# -- the helmrec serve wrapper killed --------------------------------------------------
def serve(repository: Path) -> tuple[subprocess.Popen[str], str, dict[str, int]]:
    """`helmrec serve` on ports it picks itself (port 0: the launcher picks again when
    another process binds one first; ports named here and taken in between fail the start);
    its readiness lines and the ports they name. A failed start fails with all it printed."""
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "helmrec.cli", "serve", "--model-repository", str(repository),
         "--device", "cpu", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    ready = "".join(wrapper.stdout.readline() for _ in range(4))  # type: ignore[union-attr]
    if not ready.startswith("tritonserver ready"):
        wrapper.kill()
        pytest.fail(ready + wrapper.stdout.read())  # type: ignore[union-attr]
    ports = {line.split()[0]: int(line.rsplit(":", 1)[1].split("/")[0]) for line in ready.splitlines()[1:]}
    return wrapper, ready, ports


def test_serve_wrapper_killed_under_load_takes_server_and_stubs_along(tiny_repository: Path) -> None:
    wrapper, ready, named = serve(tiny_repository)
    ports = list(named.values())
    pid = None
    try:
        pid = int(ready.split("pid ")[1].split(",")[0])
        prefix = f"helmrec_{wrapper.pid}_"
        stubs = group_members(pid) - {pid}
        assert len(stubs) >= 2 and regions(prefix)
        with under_load(f"127.0.0.1:{named['gRPC']}"):
            wrapper.kill()
            wrapper.wait()
            took = seconds_until(lambda: not group_members(pid) and all(port_free(p) for p in ports))
        assert took < GONE_WITHIN_S, f"left after {took:.1f} s: {group_members(pid)}"
        # Triton's own SIGTERM shutdown unlinks its stubs' regions; the next start sweeps any it left.
        left = regions(prefix)
        swept = orphans.sweep()
        assert not regions(prefix)
        print(
            f"\nwrapper killed: server and {len(stubs)} stubs gone, ports free after {took:.2f} s; "
            f"regions left for the next start's sweep: {len(left)} (swept {len(swept.unlinked)})"
        )
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
        if pid is not None:
            for member in group_members(pid):
                os.kill(member, signal.SIGKILL)


def test_serve_stops_cleanly_when_the_server_dies_on_its_own(tiny_repository: Path) -> None:
    wrapper, ready, _ = serve(tiny_repository)
    try:
        pid = int(ready.split("pid ")[1].split(",")[0])
        os.kill(pid, signal.SIGKILL)
        wrapper.wait(timeout=30)
        out = ready + wrapper.stdout.read()  # type: ignore[union-attr] # not communicate(): it skips what readline buffered
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 1
    assert "tritonserver exited by itself (exit code -9)" in out
    assert "trace APIs open to: nobody (no --admin-header)" in out
    assert not group_members(pid) and not regions(f"helmrec_{wrapper.pid}_")


# -- the sweep on start ----------------------------------------------------------------
def test_sweep_removes_only_what_dead_launchers_left(tmp_path: Path) -> None:
    """Real processes and real /dev/shm files: a dead launcher's are removed, a live one's,
    an untagged program's and foreign regions stay."""
    dead = "helmrec_4194304_0_0_"  # above any pid_max: this launcher cannot be alive
    live = orphans.region_prefix()
    files = {name: orphans.SHM / name for name in (f"{dead}a", f"{live}a", f"helmrec_foreign_{os.getpid()}")}
    for path in files.values():
        path.write_bytes(b"x")

    def tagged(program: str, tag: str) -> subprocess.Popen[bytes]:
        code = "import time; time.sleep(60)"
        return subprocess.Popen([program, "-c", code, f"shm-region-prefix-name={tag}"], executable=sys.executable)

    orphan, ours, untagged = tagged("tritonserver", dead), tagged("tritonserver", live), tagged("sleeper", dead)
    try:
        swept = orphans.sweep()
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert ours.poll() is None and untagged.poll() is None
        assert swept.killed == (orphan.pid,) and swept.unlinked == (f"{dead}a",)
        assert [n for n, p in files.items() if p.exists()] == [f"{live}a", f"helmrec_foreign_{os.getpid()}"]
    finally:
        for proc in (orphan, ours, untagged):
            proc.kill()
            proc.wait()
        for path in files.values():
            path.unlink(missing_ok=True)
