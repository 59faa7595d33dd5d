"""User story: a client sends a ~200 MB request straight to tritonserver (no router in
front); it gets a clear error naming the tensor, the server keeps serving, and the
memory it keeps afterwards is printed for docs/security.md (tritonserver 2.51 has no
request-size flag, so it does not return to baseline: the router is the guarded door)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helmrec.launcher import TritonServer, orphans
from helmrec.load.client import infer_inputs
from tests.launcher.test_faults import group_members

pytestmark = pytest.mark.e2e
OVERSIZE_TOKENS = 10_000_000  # int64 ids and timestamps, int32 actions: 20 bytes a token, ~200 MB
PROTOCOLS = {"grpc": grpcclient, "http": httpclient}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stubs(pgid: int) -> list[int]:
    """The live Python-backend stubs of the server whose process group is `pgid`."""
    return sorted(group_members(pgid) - {pgid})


def memory(server: TritonServer) -> tuple[float, float, float]:
    """MB: tritonserver RSS, its stubs' RSS summed, its /dev/shm regions' allocated blocks."""
    assert server.pid is not None and server.region_prefix is not None
    regions = orphans.SHM.glob(f"{server.region_prefix}*")
    return (
        rss_mb(server.pid),
        sum(rss_mb(p) for p in stubs(server.pid)),
        sum(r.stat().st_blocks * 512 for r in regions) / 2**20,
    )


def request(user: int, length: int) -> dict[str, np.ndarray]:
    pos = np.arange(length, dtype=np.int64)
    return {
        "USER_ID": np.array([user], np.int64),
        "HISTORY_ITEM_IDS": 1 + pos % 299,
        "HISTORY_TIMESTAMPS": 1_700_000_000 + pos,
        "HISTORY_ACTIONS": (pos % 2).astype(np.int32),
        "CANDIDATE_ITEM_IDS": np.arange(1, 17, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def server(tiny_repository: Path) -> Iterator[TritonServer]:
    """A server of its own, so the baseline is not another test's high-water mark."""
    with TritonServer(model_repository=tiny_repository, device="cpu") as s:
        yield s


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_oversize_request_gets_a_clear_error_and_the_server_keeps_serving(server: TritonServer, protocol: str) -> None:
    module = PROTOCOLS[protocol]
    client = module.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    for user in range(20):
        client.infer("hstu_ensemble", infer_inputs(module, request(user, 32)))
    before = memory(server)
    peak = list(before)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[:] = [max(a, b) for a, b in zip(peak, memory(server))]
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(InferenceServerException, match="HISTORY_ITEM_IDS: history length 10000000 exceeds"):
            client.infer("hstu_ensemble", infer_inputs(module, request(1, OVERSIZE_TOKENS)))
    finally:
        done.set()
        watcher.join()
    time.sleep(2)
    after = memory(server)
    scores = client.infer("hstu_ensemble", infer_inputs(module, request(99, 32))).as_numpy("SCORES")
    # An open HTTP connection holds Triton's SIGTERM shutdown for its whole 30 s exit timeout.
    client.close()
    assert scores is not None and np.isfinite(scores).all()
    rows = zip(("tritonserver RSS", "stubs' RSS", "stub /dev/shm"), before, peak, after)
    print(f"\n{protocol}, one ~200 MB request, MB before / peak / after 2 s:")
    for name, b, p, a in rows:
        print(f"  {name:16s} {b:7.0f} {p:7.0f} {a:7.0f}")
