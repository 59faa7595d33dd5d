"""User stories of the router with three real tritonserver processes behind it.

- An app built on stock tritonclient (gRPC sync, gRPC asyncio, gRPC streaming,
  HTTP with JSON or binary tensors) points at the router instead of a server and
  changes nothing else: same scores, same errors, same metadata.
- With a workload of repeat users, `helm` reuses KV prefixes far more often than
  `round_robin` (hit rate read from the backends' own pool metrics).
- Overload gets an explicit RESOURCE_EXHAUSTED, never a silent drop.
- A backend killed mid-load loses no request, and is back in rotation once it
  is healthy again.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helmrec.launcher import TritonServer, free_port
from helmrec.load.client import infer_inputs
from helmrec.router.backend_metrics import BackendReport, parse_report
from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.dispatch import RouterStats
from helmrec.router.server import RouterThread
from tests.conftest import cpu_servers
from tests.router.planes import DATA_PLANES

pytestmark = pytest.mark.e2e
MODEL = "hstu_ensemble"


# -- requests ------------------------------------------------------------------------
def user_request(user: int, length: int, num_items: int = 300, candidates: int = 16) -> dict[str, np.ndarray]:
    """A user's history is a fixed stream, so a longer request extends the shorter one's prefix."""
    pos = np.arange(length, dtype=np.int64)
    return {
        "USER_ID": np.array([user], np.int64),
        "HISTORY_ITEM_IDS": 1 + (user * 7919 + pos * 104729) % (num_items - 1),
        "HISTORY_TIMESTAMPS": 1_700_000_000 + pos * 60,
        "HISTORY_ACTIONS": ((user + pos) % 2).astype(np.int32),
        "CANDIDATE_ITEM_IDS": 1 + (user * 31 + np.arange(candidates, dtype=np.int64) * 17) % (num_items - 1),
    }


# -- three backends and a router -------------------------------------------------------
@pytest.fixture(scope="module")
def backends(tiny_repository: Path) -> Iterator[list[TritonServer]]:
    with cpu_servers(tiny_repository, 3) as servers:
        yield servers


def addresses(servers: list[TritonServer]) -> tuple[BackendAddress, ...]:
    return tuple(BackendAddress("127.0.0.1", s.grpc_port, s.http_port, s.metrics_port) for s in servers)


def router(servers: list[TritonServer], policy: str = "helm", **overrides: object) -> RouterThread:
    config = RouterConfig(
        backends=addresses(servers), policy=policy, health_interval_s=0.2, metrics_interval_s=0.2, **overrides
    )
    return RouterThread(config)


def settled_stats(r: RouterThread) -> RouterStats:
    """The router's counters once the native hop (if any) has reported what it did (every 0.5 s)."""
    if r.server.hop is not None:
        time.sleep(1.2)
    return r.server.stats


def served(r: RouterThread, slot: int) -> int:
    """Requests the router sent to backend `slot`, by either data plane (settle first)."""
    hop = r.server.hop.stats.served.get(slot, 0) if r.server.hop is not None else 0
    return r.server.dispatcher.backends[slot].served + hop


def synced(r: RouterThread) -> None:
    """Let a change made to the dispatcher's backend state reach the native hop (synced every 50 ms)."""
    if r.server.hop is not None:
        time.sleep(0.2)


def reports(servers: list[TritonServer]) -> list[BackendReport]:
    return [parse_report(urllib.request.urlopen(s.metrics_url, timeout=5).read().decode()) for s in servers]


# -- stock clients, unchanged ------------------------------------------------------------
@pytest.mark.parametrize("data_plane", DATA_PLANES)
def test_stock_clients_work_unchanged_through_the_router(backends, data_plane: str) -> None:
    arrays = user_request(user=1, length=12)
    direct = grpcclient.InferenceServerClient(backends[0].grpc_url).infer(MODEL, infer_inputs(grpcclient, arrays))
    expected = direct.as_numpy("SCORES")
    with router(backends, "round_robin", metrics_port=0, data_plane=data_plane) as r:
        url, http_url = r.server.grpc_url, r.server.http_url
        client = grpcclient.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        assert client.get_model_metadata(MODEL).name == MODEL
        assert client.get_model_config(MODEL).config.name == MODEL
        assert client.get_server_metadata().name == "triton"
        assert client.get_inference_statistics(MODEL).model_stats[0].name == MODEL
        np.testing.assert_array_equal(client.infer(MODEL, infer_inputs(grpcclient, arrays)).as_numpy("SCORES"), expected)

        async def aio_infer() -> np.ndarray:
            aio = grpcaio.InferenceServerClient(url)
            try:
                return (await aio.infer(MODEL, infer_inputs(grpcclient, arrays))).as_numpy("SCORES")
            finally:
                await aio.close()

        np.testing.assert_array_equal(asyncio.run(aio_infer()), expected)

        def stream(sequence_id: int = 0) -> list[int]:
            """Three requests over one stream; what each backend served of them."""
            answers: list[object] = []
            done = threading.Event()

            def on_answer(result, error) -> None:
                answers.append(error if error is not None else result)
                if len(answers) == 3:
                    done.set()

            before = [b.served for b in r.server.dispatcher.backends]
            client.start_stream(callback=on_answer)
            for n in range(3):
                client.async_stream_infer(
                    MODEL, infer_inputs(grpcclient, arrays), request_id=str(n), sequence_id=sequence_id, sequence_end=n == 2
                )
            assert done.wait(60), f"stream answered {len(answers)} of 3"
            client.stop_stream()
            assert sorted(a.get_response().id for a in answers) == ["0", "1", "2"], answers
            for answer in answers:
                np.testing.assert_array_equal(answer.as_numpy("SCORES"), expected)
            return sorted(b.served - s for b, s in zip(r.server.dispatcher.backends, before))

        # Each message of a stream is routed on its own: under round_robin they spread out...
        assert stream() == [1, 1, 1]
        # ...unless they belong to a Triton sequence, which stays on one backend.
        assert stream(sequence_id=88) == [0, 0, 3]
        # So does a sequence sent as unary calls.
        served = [b.served for b in r.server.dispatcher.backends]
        for n in range(3):
            client.infer(MODEL, infer_inputs(grpcclient, user_request(10 + n, 6)), sequence_id=77, sequence_end=n == 2)
        assert sorted(b.served - s for b, s in zip(r.server.dispatcher.backends, served)) == [0, 0, 3]

        http = httpclient.InferenceServerClient(http_url)
        assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(MODEL)
        assert http.get_model_metadata(MODEL)["name"] == MODEL
        assert http.get_model_config(MODEL)["name"] == MODEL
        for binary in (True, False):
            scores = http.infer(MODEL, infer_inputs(httpclient, arrays, binary)).as_numpy("SCORES")
            np.testing.assert_array_equal(scores, expected)

        own = urllib.request.urlopen(f"http://127.0.0.1:{r.server.metrics_port}/metrics", timeout=5).read().decode()
        assert "helmrec_router_requests_total" in own and "helmrec_router_backend_healthy" in own


@pytest.mark.parametrize("data_plane", DATA_PLANES)
def test_backend_errors_reach_the_client_unchanged(backends, data_plane: str) -> None:
    arrays = user_request(user=2, length=6)
    arrays["CANDIDATE_ITEM_IDS"] = np.array([5, -1], np.int64)
    with router(backends, data_plane=data_plane) as r:
        with pytest.raises(InferenceServerException) as grpc_error:
            grpcclient.InferenceServerClient(r.server.grpc_url).infer(MODEL, infer_inputs(grpcclient, arrays))
        assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "CANDIDATE_ITEM_IDS" in grpc_error.value.message()
        with pytest.raises(InferenceServerException) as http_error:
            httpclient.InferenceServerClient(r.server.http_url).infer(MODEL, infer_inputs(httpclient, arrays))
        assert http_error.value.status() == "400" and "CANDIDATE_ITEM_IDS" in http_error.value.message()
        streamed: list[object] = []
        done = threading.Event()
        client = grpcclient.InferenceServerClient(r.server.grpc_url)
        client.start_stream(callback=lambda result, error: (streamed.append(error), done.set()))
        client.async_stream_infer(MODEL, infer_inputs(grpcclient, arrays), request_id="bad")
        assert done.wait(60)
        client.stop_stream()
        assert isinstance(streamed[0], InferenceServerException) and "CANDIDATE_ITEM_IDS" in streamed[0].message()
        with pytest.raises(InferenceServerException, match="not supported through the router"):
            client.unload_model(MODEL)
        stats = settled_stats(r)
        assert stats.retries == 0 and stats.answered == 3  # an error answer is an answer: no retry


# -- repeat users: helm vs round_robin ---------------------------------------------------
def repeat_user_run(servers: list[TritonServer], policy: str, first_user: int) -> tuple[float, float]:
    """36 users x 3 requests each (history growing by 4), shuffled, 2 clients at once.

    Returns the KV hit rate the backends' pools measured
    (helmrec_kv_hits_total / helmrec_kv_requests_total, deltas over the run) and
    the one the router's placement record predicted.
    """
    rng = np.random.default_rng(first_user)
    users = list(range(first_user, first_user + 36))
    order = [u for _ in range(3) for u in rng.permutation(users).tolist()]
    lengths: dict[int, int] = {}
    jobs = []
    for user in order:
        lengths[user] = lengths.get(user, 4) + 4
        jobs.append(user_request(user, lengths[user]))
    before = quiet_reports(servers)
    with router(servers, policy) as r:
        client = grpcclient.InferenceServerClient(r.server.grpc_url)
        # Two clients, each sending its half in order, so a user's requests keep their order.
        halves = [[j for j in jobs if int(j["USER_ID"][0]) % 2 == k] for k in (0, 1)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda half: [client.infer(MODEL, infer_inputs(grpcclient, a)) for a in half], halves))
        assert sum(len(r_) for r_ in results) == len(jobs)
        predicted = r.server.dispatcher.stats.predicted_kv_hit_rate
    after = settled_reports(servers, before, len(jobs))
    requests = sum(a.kv_requests_total - (b.kv_requests_total or 0) for a, b in zip(after, before))
    hits = sum(a.kv_hits_total - (b.kv_hits_total or 0) for a, b in zip(after, before))
    assert requests == len(jobs), f"the pools counted {requests} KV lookups for {len(jobs)} requests"
    return hits / requests, predicted


def quiet_reports(servers: list[TritonServer], window_s: float = 1.0) -> list[BackendReport]:
    """Reports once earlier tests' requests are all published: the pools export once per
    control window (1 s in model_repository/hstu_pool), so wait until a window passes unchanged."""
    deadline = time.monotonic() + 15
    last = reports(servers)
    while True:
        time.sleep(1.5 * window_s)
        now = reports(servers)
        if [r.kv_requests_total for r in now] == [r.kv_requests_total for r in last] or time.monotonic() > deadline:
            return now
        last = now


def settled_reports(servers: list[TritonServer], before: list[BackendReport], sent: int) -> list[BackendReport]:
    """Reports once the pools have published all `sent` requests (they export per control window)."""
    deadline = time.monotonic() + 10
    while True:
        after = reports(servers)
        missing = [i for i, a in enumerate(after) if a.kv_requests_total is None]
        assert not missing, f"backends {missing} export no helmrec_kv_requests_total"
        counted = sum(a.kv_requests_total - (b.kv_requests_total or 0) for a, b in zip(after, before))
        if counted >= sent or time.monotonic() > deadline:
            return after
        time.sleep(0.2)


def test_helm_gets_far_higher_kv_hit_rate_than_round_robin(backends) -> None:
    rr, rr_predicted = repeat_user_run(backends, "round_robin", first_user=1000)
    helm, helm_predicted = repeat_user_run(backends, "helm", first_user=2000)
    print(
        f"\nKV hit rate (backends' helmrec_kv_hits_total / helmrec_kv_requests_total), repeat users: "
        f"round_robin {rr:.3f}, helm {helm:.3f}  [router record predicted {rr_predicted:.3f} / {helm_predicted:.3f}]"
    )
    assert helm >= 0.6 and helm > 1.5 * rr


# -- a backend that fails before answering --------------------------------------------------
@pytest.mark.parametrize("data_plane", DATA_PLANES)
def test_request_on_a_dead_backend_is_retried_once_elsewhere(backends, data_plane: str) -> None:
    """The router believes a dead port is healthy; every door's request lands there first."""
    dead = BackendAddress("127.0.0.1", free_port(), free_port())
    live = BackendAddress("127.0.0.1", backends[0].grpc_port, backends[0].http_port)
    config = RouterConfig(backends=(dead, live), policy="least_loaded", health_interval_s=60.0, data_plane=data_plane)
    with RouterThread(config) as r:
        d = r.server.dispatcher
        arrays = user_request(user=6, length=8)

        def lure() -> None:
            """Dead backend 'up' and idle, the live one looking busier: least_loaded picks the dead one."""
            d.backends[0].mark_up()
            d.backends[1].queue_depth = 5.0
            synced(r)

        lure()
        scores = grpcclient.InferenceServerClient(r.server.grpc_url).infer(MODEL, infer_inputs(grpcclient, arrays))
        assert scores.as_numpy("SCORES").shape == (16, 2) and settled_stats(r).retries == 1
        assert not d.backends[0].healthy  # the native hop reports the failure to the control plane too

        lure()
        http = httpclient.InferenceServerClient(r.server.http_url)
        assert http.infer(MODEL, infer_inputs(httpclient, arrays)).as_numpy("SCORES").shape == (16, 2)
        assert r.server.stats.retries == 2

        lure()
        client = grpcclient.InferenceServerClient(r.server.grpc_url)
        answers: list[object] = []
        done = threading.Event()
        client.start_stream(callback=lambda result, error: (answers.append(error or result), done.set()))
        client.async_stream_infer(MODEL, infer_inputs(grpcclient, arrays))
        assert done.wait(60)
        client.stop_stream()
        assert not isinstance(answers[0], InferenceServerException), answers[0]
        assert r.server.stats.retries == 3 and not d.backends[0].healthy

        # With the only healthy backend gone too, the answer is an explicit UNAVAILABLE.
        d.backends[1].healthy = False
        synced(r)
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, infer_inputs(grpcclient, arrays))
        assert info.value.status() == "StatusCode.UNAVAILABLE" and "no healthy backend" in info.value.message()


# -- overload ------------------------------------------------------------------------------
@pytest.mark.parametrize("data_plane", DATA_PLANES)
def test_overload_is_refused_explicitly(backends, data_plane: str) -> None:
    with router(backends, "least_loaded", max_in_flight_per_backend=1, data_plane=data_plane) as r:

        async def burst() -> list[object]:
            client = grpcaio.InferenceServerClient(r.server.grpc_url)
            try:
                calls = [client.infer(MODEL, infer_inputs(grpcclient, user_request(3000 + i, 8))) for i in range(24)]
                return await asyncio.gather(*calls, return_exceptions=True)
            finally:
                await client.close()

        results = asyncio.run(burst())
    refused = [x for x in results if isinstance(x, InferenceServerException)]
    answered = [x for x in results if not isinstance(x, BaseException)]
    assert len(refused) + len(answered) == 24 and refused and answered
    for error in refused:
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED" and "router overloaded" in error.message()


# -- the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("data_plane", DATA_PLANES)
def test_helmrec_route_cli_serves_stock_clients(backends, data_plane: str) -> None:
    port = free_port()
    specs = [f"--backend=127.0.0.1:{s.grpc_port},http={s.http_port},metrics={s.metrics_port}" for s in backends]
    proc = subprocess.Popen(
        [sys.executable, "-m", "helmrec.cli", "route", *specs, f"--grpc-port={port}", "--http-port=-1",
         f"--data-plane={data_plane}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "router ready" in banner and "3/3 backends healthy" in banner, banner
        scores = grpcclient.InferenceServerClient(f"127.0.0.1:{port}").infer(MODEL, infer_inputs(grpcclient, user_request(5, 8)))
        assert scores.as_numpy("SCORES").shape == (16, 2)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


# -- a backend dies mid-load (runs last: it restarts one backend) --------------------------
def revive(backends: list[TritonServer], slot: int) -> None:
    """Backend `slot` stopped and started again on the same ports (a restart, as an operator's)."""
    victim = backends[slot]
    victim.stop()
    backends[slot] = TritonServer(
        model_repository=victim.model_repository,
        device="cpu",
        http_port=victim.http_port,
        grpc_port=victim.grpc_port,
        metrics_port=victim.metrics_port,
    ).start()


@pytest.mark.parametrize("data_plane", DATA_PLANES)
def test_backend_killed_mid_load_loses_no_request_and_returns_when_healthy(backends, data_plane: str) -> None:
    victim = backends[2]
    try:
        _kill_mid_load_and_revive(backends, data_plane)
    finally:  # whatever failed, the next data plane's run starts from a live backend
        if backends[2] is victim:
            revive(backends, 2)


def _kill_mid_load_and_revive(backends: list[TritonServer], data_plane: str) -> None:
    with router(backends, "round_robin", data_plane=data_plane) as r:
        client = grpcclient.InferenceServerClient(r.server.grpc_url)
        victim = backends[2]
        sent = threading.Event()
        count = {"n": 0}

        streaming = grpcclient.InferenceServerClient(r.server.grpc_url)
        streamed: queue.Queue[object] = queue.Queue()
        streaming.start_stream(callback=lambda result, error: streamed.put(error if error is not None else result))

        lost: list[str] = []

        def worker(w: int) -> int:
            """Worker 0 sends unary gRPC, 1 over one gRPC stream, 2-3 HTTP: no door may lose a request.

            Each HTTP worker has its own client: tritonclient.http runs on gevent and a
            client must not be shared across threads."""
            http = httpclient.InferenceServerClient(r.server.http_url) if w >= 2 else None
            done = 0
            for i in range(30):
                arrays = user_request(4000 + w * 100 + i, 10)
                try:
                    if w == 0:
                        scores = client.infer(MODEL, infer_inputs(grpcclient, arrays))
                    elif w == 1:
                        streaming.async_stream_infer(MODEL, infer_inputs(grpcclient, arrays), request_id=str(i))
                        scores = streamed.get(timeout=60)
                        if isinstance(scores, Exception):
                            raise scores
                    else:
                        scores = http.infer(MODEL, infer_inputs(httpclient, arrays))  # type: ignore[union-attr]
                except Exception as exc:  # recorded, so one failure does not hide the others
                    # str(): tritonclient's InferenceServerException keeps its message out of repr()
                    lost.append(f"worker {w} request {i}: {type(exc).__name__}: {exc}")
                    continue
                if scores.as_numpy("SCORES").shape == (16, 2):
                    done += 1
                count["n"] += 1
                if count["n"] >= 20:
                    sent.set()
            return done

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(worker, w) for w in range(4)]
            assert sent.wait(120)
            os.kill(victim.pid, signal.SIGKILL)  # no drain, connections reset mid-request
            answered = sum(f.result() for f in futures)
        streaming.stop_stream()
        assert not lost, lost
        assert answered == 120
        stats = settled_stats(r)
        assert stats.answered == 120 and stats.unavailable == 0
        assert not r.server.dispatcher.backends[2].healthy
        print(f"\nkilled backend 2 mid-load: 120/120 answered, {stats.retries} retried on another backend")

        # The backend comes back on the same ports: the router returns it to rotation.
        revive(backends, 2)
        deadline = time.monotonic() + 30
        while not r.server.dispatcher.backends[2].healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.server.dispatcher.backends[2].healthy
        synced(r)
        settled_stats(r)
        before = served(r, 2)
        for i in range(6):
            client.infer(MODEL, infer_inputs(grpcclient, user_request(5000 + i, 6)))
        settled_stats(r)
        assert served(r, 2) == before + 2
