"""Find the `tritonserver` binary that nvidia-pytriton ships and make it runnable.

The wheel carries a real Triton 2.51 server, its Python backend and one backend
stub per Python minor version. The server loads the backend from a *backend
directory*, and the stub in that directory must match the Python that will run
`model.py` (this venv's). We never write into site-packages: the backend tree is
copied once into a cache folder with the right stub beside it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path


class LauncherError(RuntimeError):
    """A problem the operator can fix (missing binary, busy port, bad path)."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the server binary, its libraries and the prepared backends live."""

    binary: Path
    backend_directory: Path
    library_paths: tuple[Path, ...]
    python_bin: Path

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for the server process.

        libpython and the wheel's bundled libraries go on LD_LIBRARY_PATH so the
        stub can load; this venv's `bin` goes first on PATH so the stub runs
        model.py with this venv's interpreter and site-packages.
        """
        env = dict(os.environ if base is None else base)
        libs = [str(p) for p in self.library_paths]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = f"{self.python_bin}:{env.get('PATH', '')}"
        return env


def _pytriton_root() -> Path:
    """The installed pytriton package folder, found without importing it (its client needs gevent)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise LauncherError(
            "nvidia-pytriton is not installed: it ships the tritonserver binary "
            "(pip install nvidia-pytriton), or pass --tritonserver PATH"
        )
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "helmrec"


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _prepare_backends(dist_root: Path) -> Path:
    """Copy the Python backend with this interpreter's stub into the cache.

    The copy is keyed by the wheel's location and the Python version so two
    venvs never share a stub built for the wrong interpreter.
    """
    stub = dist_root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        raise LauncherError(
            f"no Python backend stub for Python {_python_version()} in {stub.parent.parent} "
            "(nvidia-pytriton ships stubs for 3.8-3.13)"
        )
    key = f"{hashlib.sha1(str(dist_root).encode()).hexdigest()[:10]}-py{_python_version()}"
    target = _cache_root() / "backends" / key
    marker = target / "python" / "triton_python_backend_stub"

    def ready() -> bool:
        return marker.is_file() and marker.stat().st_size == stub.stat().st_size

    if ready():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Servers started at once (threads of one benchmark, or several processes) all find the
    # cache empty: one copies while the others wait, then find it ready. flock holds per open
    # file, so it serialises threads of one process as well as processes.
    with open(target.with_name(key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return target
        staging = Path(tempfile.mkdtemp(prefix=key + ".tmp", dir=target.parent))
        try:
            shutil.copytree(dist_root / "backends", staging, dirs_exist_ok=True)
            shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
            shutil.rmtree(target, ignore_errors=True)  # a copy for another stub size: no server can be using it
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def locate(tritonserver: str | os.PathLike[str] | None = None) -> TritonDistribution:
    """Find the server to run: the given binary, or the one inside nvidia-pytriton."""
    python_bin = Path(sys.executable).parent
    libpython_dir = Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix + "/lib")
    if tritonserver is not None:
        binary = Path(tritonserver)
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise LauncherError(f"--tritonserver {binary}: no executable file there")
        # The official container keeps its backends next to the binary.
        backends = binary.resolve().parent.parent / "backends"
        return TritonDistribution(binary, backends, (libpython_dir,), python_bin)
    root = _pytriton_root()
    dist_root = root / "tritonserver"
    binary = dist_root / "bin" / "tritonserver"
    if not binary.is_file():
        raise LauncherError(f"the tritonserver binary is missing from nvidia-pytriton at {binary}")
    libs = root.parent / "nvidia_pytriton.libs"
    return TritonDistribution(binary, _prepare_backends(dist_root), (libpython_dir, libs), python_bin)
