"""Run one `tritonserver` process on loopback ports and stop it reliably.

Used by `helmrec serve`, the tests, the router's tests and the benchmarks, so
every caller gets the same guarantees: ports are chosen or checked before the
start, `start()` returns only when the server says it is ready (or raises with
the tail of its log), the state-changing APIs answer only the operator's header,
and no server, stub or shared-memory region outlives the server or its launcher:
- the server gets SIGTERM when the launching process dies (tether.py);
- when the server exits for any reason, its Python-backend stubs (its process
  group) are killed and its `/dev/shm` regions unlinked at once;
- each start removes what launchers that died left behind (orphans.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from helmrec.launcher import orphans, tether
from helmrec.launcher.admin import AdminHeader
from helmrec.launcher.binary import LauncherError, TritonDistribution, locate

DEVICES = ("cpu", "cuda", "auto")
PORT_RETRIES = 3
# What tritonserver logs when a port it was given is already bound.
PORT_TAKEN_SIGNS = ("Address already in use", "address already in use", "Socket '")
# Triton logs this and serves on without metrics; the router's load guard reads them.
METRICS_FAILED_SIGN = "failed to start Metrics service"


class _PortTaken(Exception):
    """The server exited while starting because a port was already bound."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out; it is released before tritonserver binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise LauncherError(f"--{what}-port {port}: {host}:{port} is already in use ({exc.strerror})") from None


class _ServerProcess:
    """A started tritonserver, watched by one thread that is the only one to reap it.

    When the server exits, its process group (the server and its Python-backend
    stubs: a stub whose server is a zombie keeps waiting for it, and one whose
    server is gone can hang on exit) is killed *before* the server is reaped, so
    the group id cannot have been reused by then; then the server's shared-memory
    regions are unlinked. Signals go through the same lock, never to a reaped pid.
    """

    def __init__(self, proc: subprocess.Popen[bytes], region_prefix: str) -> None:
        self.proc = proc
        self.region_prefix = region_prefix
        self.gone = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name=f"tritonserver-{proc.pid}-watch", daemon=True).start()

    def _watch(self) -> None:
        os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the server ended its stubs itself
            self.proc.wait()
            orphans.remove_regions(self.region_prefix)
            self.gone.set()

    def signal(self, sig: int, group: bool = False) -> None:
        with self._lock:
            if not self.gone.is_set():
                (os.killpg if group else os.kill)(self.proc.pid, sig)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.gone.is_set() else None


@dataclass
class TritonServer:
    """A `tritonserver` child process serving one model repository.

    Port 0 means "pick a free loopback port". `device` reaches the models as the
    HELMREC_DEVICE environment variable ("auto" lets each model use CUDA when
    torch sees a GPU). Logging, shared-memory, model-repository and trace APIs
    answer only clients that send `admin` (default: a random header nobody has;
    tests pass `server.admin.http_headers()` / `grpc_headers()`).
    """

    model_repository: str | os.PathLike[str]
    device: str = "auto"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    tritonserver: str | os.PathLike[str] | None = None
    startup_timeout_s: float = 180.0
    log_verbose: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    admin: AdminHeader = field(default_factory=AdminHeader.random, repr=False)

    _proc: _ServerProcess | None = field(default=None, init=False, repr=False)
    _log_path: Path | None = field(default=None, init=False, repr=False)

    # -- endpoints -----------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.proc.pid

    @property
    def region_prefix(self) -> str | None:
        """The prefix of this server's Python-backend regions in /dev/shm."""
        return None if self._proc is None else self._proc.region_prefix

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    # -- lifecycle -----------------------------------------------------------------
    def _command(self, dist: TritonDistribution, region_prefix: str) -> list[str]:
        return [
            str(dist.binary),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={dist.backend_directory}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={region_prefix}",
            *self.admin.triton_args(),
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Start and wait until ready. Ports we picked ourselves can be taken by another
        process between our pick and the server's bind; then we pick again (up to
        PORT_RETRIES times). Ports the caller named are checked once and never changed."""
        repo = Path(self.model_repository)
        if not repo.is_dir():
            raise LauncherError(f"--model-repository {repo}: no such directory")
        if self.device not in DEVICES:
            raise LauncherError(f"--device {self.device}: expected one of {', '.join(DEVICES)}")
        dist = locate(self.tritonserver)
        orphans.sweep()
        auto = [what for what in ("http", "grpc", "metrics") if not getattr(self, f"{what}_port")]
        for what in ("http", "grpc", "metrics"):
            if what not in auto:
                _check_port(self.host, getattr(self, f"{what}_port"), what)
        for attempt in range(PORT_RETRIES + 1):
            for what in auto:
                setattr(self, f"{what}_port", free_port(self.host))
            try:
                self._launch(dist)
                return self
            except _PortTaken:
                if not auto or attempt == PORT_RETRIES:
                    raise LauncherError(f"tritonserver could not bind its ports:\n{self._tail()}") from None

    def _launch(self, dist: TritonDistribution) -> None:
        env = dist.environment()
        env["HELMREC_DEVICE"] = self.device
        env.update(self.extra_env)
        fd, log_name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
        self._log_path = Path(log_name)
        region_prefix = orphans.region_prefix()
        with os.fdopen(fd, "wb") as log_file:
            proc = tether.spawn(
                self._command(dist, region_prefix),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Ctrl-C in a terminal reaches us, and we forward it; the server's
                # group holds its stubs, so one killpg ends them all.
                start_new_session=True,
            )
        self._proc = _ServerProcess(proc, region_prefix)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _ready(self) -> bool:
        """Health ready, and metrics served: Triton opens its metrics port after it reports
        ready, and serves on if that fails."""
        return self._answers(f"http://{self.http_url}/v2/health/ready") and self._answers(self.metrics_url)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._proc is not None
        while time.monotonic() < deadline:
            code = self._proc.returncode  # before the log: an exited server has written all of it
            log = self.log()
            if code is not None or METRICS_FAILED_SIGN in log:
                if any(sign in log for sign in PORT_TAKEN_SIGNS):
                    raise _PortTaken()
                what = f"exited with code {code} while starting" if code is not None else "started without its metrics service"
                raise LauncherError(f"tritonserver {what}:\n{self._tail()}")
            if self._ready():
                return
            time.sleep(0.2)
        raise LauncherError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait(self) -> int:
        """Block until the server has exited and its stubs and regions are gone; its exit code."""
        server = self._proc
        assert server is not None, "server not started"
        server.gone.wait()
        return int(server.proc.returncode)

    def send_signal(self, sig: int) -> None:
        if self._proc is not None:
            self._proc.signal(sig)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL the whole group."""
        server, self._proc = self._proc, None
        if server is None:
            return None
        server.signal(signal.SIGTERM)
        if not server.gone.wait(timeout_s):
            server.signal(signal.SIGKILL, group=True)
            server.gone.wait()
        return server.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
