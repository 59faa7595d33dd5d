"""The backend list as a file: its format, the errors that name a line, and how the
dispatcher and the watcher apply a new list (no sockets, no servers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helmrec.router.backend_file import BackendFileWatcher, parse_backend_file
from helmrec.router.config import BackendAddress, ConfigError, RouterConfig
from helmrec.router.dispatch import Dispatcher
from helmrec.router.request_features import Features
from helmrec.router.state import RouteRequest


def test_a_file_lists_one_backend_spec_a_line_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "backends"
    path.write_text("# the cluster\n\n10.0.0.1:8001,http=8000,metrics=8002  # rack 1\n  10.0.0.2:8001\n")
    assert parse_backend_file(path) == (
        BackendAddress("10.0.0.1", 8001, 8000, 8002),
        BackendAddress("10.0.0.2", 8001),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1:8001\n# fine\nlocalhost\n", ":3: --backend 'localhost': expected HOST:GRPC_PORT"),
        ("10.0.0.1:8001,grpc=9\n", ":1: --backend '10.0.0.1:8001,grpc=9': unknown option 'grpc=9'"),
        ("10.0.0.1:8001\n10.0.0.1:8001,http=8000\n", ":2: 10.0.0.1:8001 is already listed on line 1"),
        ("# nothing yet\n", ": lists no backend"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "backends"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_backend_file(path)
    assert f"--backend-file {path}{message}" in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backends: cannot be read"):
        parse_backend_file(tmp_path / "backends")


def address(port: int, http: int | None = None) -> BackendAddress:
    return BackendAddress("127.0.0.1", port, http)


def test_update_keeps_slots_retires_removed_and_probes_added_first() -> None:
    d = Dispatcher(RouterConfig(backends=(address(1), address(2, http=12))))
    added, removed = d.update_backends((address(2), address(3, http=13)))
    assert (added, removed) == ([2], [0])
    assert d.backends[0].retired and not d.backends[0].healthy
    assert not d.backends[2].healthy  # in rotation only once a probe finds it ready
    assert d.http_indices == [2]  # backend 2 lost its http= port, backend 1 is retired
    d.backends[0].mark_up()  # a probe answered late: a retired backend stays out
    assert not d.backends[0].healthy and d.listed() == [1, 2]
    added, removed = d.update_backends((address(1), address(2), address(3)))
    assert (added, removed) == ([0], []) and not d.backends[0].retired and len(d.backends) == 3
    d.backends[0].mark_up()
    assert d.backends[0].healthy


def test_a_retired_backend_drains_what_it_has_in_flight() -> None:
    d = Dispatcher(RouterConfig(backends=(address(1), address(2)), policy="round_robin"))
    request = Features(RouteRequest(user_id=7, history_len=3))
    index = d.place(request)
    d.update_backends(tuple(a for i, a in enumerate(d.addresses) if i != index))
    assert d.backends[index].in_flight == 1  # still counted until its answer
    d.answered(request, index)
    assert d.backends[index].in_flight == 0
    for _ in range(4):  # no new request goes there
        placed = d.place(request)
        assert placed != index
        d.answered(request, placed)


def test_the_watcher_applies_a_change_and_keeps_the_last_good_list_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "backends"
    path.write_text("127.0.0.1:1\n")
    applied: list[tuple[BackendAddress, ...]] = []

    async def apply(backends: tuple[BackendAddress, ...]) -> None:
        applied.append(backends)

    async def tick() -> None:
        return None

    async def scenario() -> str | None:
        # A long poll: only reload() (what SIGHUP calls) makes it read the file.
        watcher = BackendFileWatcher(path, apply, tick, interval_s=60)
        watcher.reload()
        watcher.start()
        await asyncio.sleep(0.1)
        path.write_text("127.0.0.1:1\n127.0.0.1:2\n")
        watcher.reload()
        await asyncio.sleep(0.1)
        path.write_text("127.0.0.1:1\nnot a backend\n")
        watcher.reload()
        await asyncio.sleep(0.1)
        await watcher.stop()
        return watcher.last_error

    error = asyncio.run(scenario())
    assert applied == [(address(1),), (address(1), address(2))]
    assert error is not None and f"{path}:2: --backend 'not a backend'" in error
