"""User story: someone without the repository installs the built wheel into a fresh virtual
environment and uses it: the generic top-level names are gone, the allocator finds its
packaged policy, and a packaged model repository, once given weights, serves scores.

Nothing of the checkout is reachable from that environment: the wheel is built from a
copy of the work tree's files (as a clone has them: no build/ leftovers, no weights),
and every command runs from a temporary folder with no PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from helmrec.hstu.config import PRESETS
from helmrec.launcher import free_port

# Fixture set-up (build, venv, installs) counts toward the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

CHECKOUT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # pinned first, so no dependency pulls the multi-GB CUDA build
GENERIC_NAMES = ("router", "load", "allocator", "python_backend")
# folder of the work tree -> its place in the wheel (pyproject.toml's package-dir)
FOLDERS = {"python_backend": "helmrec", "allocator": "helmrec/allocator", "router": "helmrec/router",
           "load": "helmrec/load", "model_repository": "helmrec/model_repository"}


def _run(command: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(map(str, command))
    assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _copy_work_tree(target: Path) -> Path:
    """The files a clone of this work tree would have: tracked and untracked-but-not-ignored."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT)
    for name in filter(None, listed.split("\0")):
        source = CHECKOUT / name
        if source.is_file():  # a tracked file deleted in the work tree is not there
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_work_tree(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", out, source], cwd=out)
    (built,) = out.glob("helmrec-*.whl")
    return built


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty working folder for the installed commands, outside the checkout."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def venv(wheel: Path, home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", root], cwd=home)
    # --no-compile: byte-compiling every installed file is a minute of a 2-core CI machine;
    # Python compiles what it imports anyway.
    pip = [root / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, TORCH], cwd=home, env=clean_env(root))
    _run([*pip, wheel], cwd=home, env=clean_env(root))
    print(f"fresh venv with the wheel and its dependencies in {time.monotonic() - started:.0f} s")
    return root


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment with nothing that points Python at the checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    elsewhere = [p for p in env.get("PATH", "").split(os.pathsep) if str(CHECKOUT) not in p]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *elsewhere])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def test_the_wheel_carries_every_module_and_the_data_and_no_weights(source: Path, wheel: Path) -> None:
    """pyproject.toml lists the packages one by one: a new one left off the list fails here."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"helmrec/allocator/policy.npz"}
    expected |= {f"helmrec/allocator/costs/{p.name}" for p in (source / "allocator" / "costs").glob("*.json")}
    for folder, package in FOLDERS.items():
        expected |= {f"{package}/{p.relative_to(source / folder)}" for p in (source / folder).rglob("*.py")}
    for config in (source / "model_repository").glob("*/config.pbtxt"):
        expected.add(f"helmrec/model_repository/{config.parent.name}/config.pbtxt")
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.endswith((".pt", ".pyc", ".plan", ".onnx")) or "__pycache__" in n]
    assert not [n for n in names if n.split("/")[0] in (*GENERIC_NAMES, "tests")]


def test_only_the_helmrec_root_is_importable(venv: Path, home: Path) -> None:
    python = venv / "bin" / "python"
    for name in GENERIC_NAMES:
        done = subprocess.run([python, "-c", f"import {name}"], cwd=home, env=clean_env(venv), capture_output=True, text=True)
        assert done.returncode != 0 and f"No module named '{name}'" in done.stderr, (name, done.stderr)
    where = _run([python, "-c", "import helmrec.router, helmrec.allocator, sys; print(helmrec.__file__); print(sys.path)"],
                 cwd=home, env=clean_env(venv))
    assert where.splitlines()[0].startswith(str(venv)), where
    assert str(CHECKOUT) not in where


def test_version_and_allocator_evaluation_run(venv: Path, home: Path) -> None:
    helmrec = venv / "bin" / "helmrec"
    assert _run([helmrec, "--version"], cwd=home, env=clean_env(venv)).strip() == "helmrec 0.1.0"
    out = _run([helmrec, "eval-allocator", "--quick", "--json", home / "eval.json"], cwd=home, env=clean_env(venv))
    assert "full controller: worst-regime gap" in out
    assert (home / "eval.json").is_file()


def test_an_initialised_repository_serves_scores(venv: Path, home: Path) -> None:
    helmrec = venv / "bin" / "helmrec"
    _run([helmrec, "init-repository", "repo", "--preset", "tiny"], cwd=home, env=clean_env(venv))
    http, grpc, metrics = (free_port() for _ in range(3))
    server = subprocess.Popen(
        [helmrec, "serve", "--model-repository", "repo", "--device", "cpu",
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        cwd=home, env=clean_env(venv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        first = server.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("tritonserver ready"), first + server.stdout.read()  # type: ignore[union-attr]
        arrays = {
            "USER_ID": np.array([7], np.int64),
            "HISTORY_ITEM_IDS": np.array([3, 9, 4, 27, 11], np.int64),
            "HISTORY_TIMESTAMPS": np.array([100, 160, 400, 401, 900], np.int64),
            "CANDIDATE_ITEM_IDS": np.array([5, 6, 42, 8], np.int64),
        }
        inputs = []
        for name, value in arrays.items():
            tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        scores = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}").infer("hstu_ensemble", inputs).as_numpy("SCORES")
        assert scores.shape == (4, PRESETS["tiny"].num_tasks)
        assert np.isfinite(scores).all()
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, out
    assert "tritonserver stopped" in out
