"""The launcher's copy of the Python backend into the cache, as several servers starting at once see it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from helmrec.launcher import binary


def fake_distribution(root: Path) -> Path:
    """A tritonserver tree with the parts `_prepare_backends` copies: backends/python and a stub."""
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_bytes(b"backend" * 1000)
    stubs = root / "python_backend_stubs" / binary._python_version()
    stubs.mkdir(parents=True)
    (stubs / "triton_python_backend_stub").write_bytes(b"stub" * 5000)
    return root


def test_servers_starting_at_once_share_one_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads find the cache empty at the same moment (as `Cluster` starts its nodes):
    each gets the same complete backend folder, and no staging folder is left behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dist = fake_distribution(tmp_path / "tritonserver")
    start = threading.Barrier(8)
    results: list[Path | BaseException] = []

    def prepare() -> None:
        start.wait()
        try:
            results.append(binary._prepare_backends(dist))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1, results
    target = results[0]
    assert isinstance(target, Path)
    assert (target / "python" / "triton_python_backend_stub").read_bytes() == b"stub" * 5000
    assert (target / "python" / "libtriton_python.so").is_file()
    assert [p.name for p in target.parent.iterdir() if ".tmp" in p.name] == []
