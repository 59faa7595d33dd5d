"""User story: a backend that dies and comes back earns traffic again under `helm`.

Two real tritonservers behind a `helm` router; every user ranks the same
popular candidates, so the surviving backend's EMB sketch is hot for all of
them while the restarted one's is cold (and its records were cleared with its
caches). Homes are rendezvous hashes over the healthy backends: while it is
down every user goes to the survivor; once it is back, its own users return to
it at once and new users whose home it is go there, not never.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helmrec.launcher import TritonServer
from helmrec.load.client import infer_inputs
from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.rendezvous import home_order
from helmrec.router.server import RouterThread
from tests.conftest import cpu_servers

pytestmark = pytest.mark.e2e
MODEL = "hstu_ensemble"
POPULAR = 1 + np.arange(16, dtype=np.int64) * 13


def request(user: int) -> dict[str, np.ndarray]:
    pos = np.arange(6, dtype=np.int64)
    return {
        "USER_ID": np.array([user], np.int64),
        "HISTORY_ITEM_IDS": 1 + (user + pos * 7) % 250,
        "HISTORY_TIMESTAMPS": 1_700_000_000 + pos * 60,
        "CANDIDATE_ITEM_IDS": POPULAR,
    }


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_restarted_backend_gets_new_users_back_under_helm(tiny_repository: Path) -> None:
    # The restarted server replaces servers[1] in the list, so the context stops it too.
    with cpu_servers(tiny_repository, 2) as servers:
        addresses = tuple(BackendAddress("127.0.0.1", s.grpc_port) for s in servers)
        with RouterThread(RouterConfig(backends=addresses, policy="helm", health_interval_s=0.2)) as router:
            client = grpcclient.InferenceServerClient(router.server.grpc_url)
            state = router.server.dispatcher.backends
            for user in range(40):
                client.infer(MODEL, infer_inputs(grpcclient, request(user)))
            assert min(b.served for b in state) >= 10, [b.served for b in state]

            victim = servers[1]
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            wait_until(lambda: not state[1].healthy)
            for user in range(100, 110):  # new users meanwhile: all on the survivor
                client.infer(MODEL, infer_inputs(grpcclient, request(user)))
            victim.stop()
            servers[1] = TritonServer(
                model_repository=tiny_repository,
                device="cpu",
                http_port=victim.http_port,
                grpc_port=victim.grpc_port,
                metrics_port=victim.metrics_port,
            ).start()
            wait_until(lambda: state[1].healthy)

            names = [b.name for b in state]
            placed, homed_there = [], []
            for user in [*range(40), *range(200, 240)]:  # its old users, then new ones
                served = state[1].served
                client.infer(MODEL, infer_inputs(grpcclient, request(user)))
                placed.append(int(state[1].served > served))
                homed_there.append(int(home_order(user, names)[0] == 1))
            print(f"\nusers to the restarted backend: {placed}; users homed per backend after: {[len(b.kv) for b in state]}")
            # At once, not after a warm-up that never comes: every user whose home it is.
            assert placed == homed_there
            assert sum(placed[:40]) >= 10 and sum(placed[40:]) >= 10, placed
