"""Shared fixtures: a real tritonserver on free loopback ports, always stopped.

The served repository is a temporary copy of model_repository/ with freshly
initialised weights of the `tiny` preset, so the suite never depends on a
trained artefact and never writes into the checkout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helmrec.launcher import TritonServer
from helmrec.launcher.repository import stage_repository


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_repository(tmp_path_factory.mktemp("repo") / "model_repository")


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path) -> Iterator[TritonServer]:
    """One CPU tritonserver for the session's end-to-end tests."""
    with TritonServer(model_repository=tiny_repository, device="cpu") as server:
        yield server


@contextlib.contextmanager
def cpu_servers(repository: Path, count: int) -> Iterator[list[TritonServer]]:
    """`count` CPU tritonservers of `repository`, started side by side (each start takes
    seconds), all stopped on the way out whatever happened."""
    servers = [TritonServer(model_repository=repository, device="cpu") for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda s: s.start(), servers))
        yield servers
    finally:
        for server in servers:
            server.stop()
