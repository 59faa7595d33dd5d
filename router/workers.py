"""`helmrec route --workers N`: N router processes behind one gRPC port and one HTTP port.

One router process tops out at about 2,000 requests a second per core (Python,
one event loop). Workers are whole router processes that bind the same ports
with SO_REUSEPORT, so the kernel deals incoming connections among them; they
never talk, and agree on every user because `kv_aware` and `helm` place a user
on its rendezvous home. The parent only starts them, forwards SIGTERM/SIGINT,
and supervises: a worker that dies (or fails to start) is not restarted; the
parent stops the others and exits 1 naming it, so the service manager that
runs `helmrec route` restarts one whole, consistent router.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import wait
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from helmrec.router.config import RouterConfig
from helmrec.router.worker_metrics import WorkersCollector, worker_metrics_port

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_config(config: RouterConfig, index: int) -> RouterConfig:
    """Worker `index`'s config: the shared ports, its own private metrics port (metrics_port + 1 + index)."""
    metrics = None if config.metrics_port is None else worker_metrics_port(config.metrics_port, index)
    return dataclasses.replace(config, metrics_port=metrics)


def serve_summed_metrics(config: RouterConfig) -> object | None:
    """The parent's `--metrics-port`: every worker's figures merged at scrape time (worker_metrics.py)."""
    if config.metrics_port is None:
        return None
    registry = CollectorRegistry()
    ports = [worker_metrics_port(config.metrics_port, k) for k in range(config.workers)]
    registry.register(WorkersCollector(config.host, ports))
    try:
        server, _ = start_http_server(config.metrics_port, config.host, registry)
    except OSError as exc:
        raise OSError(f"--metrics-port {config.metrics_port}: cannot bind {config.host} ({exc.strerror})") from None
    return server


def check_ports_free(config: RouterConfig) -> None:
    """Fail fast when another process holds a front-door port (SO_REUSEPORT would share it silently)."""
    ports = [("--grpc-port", config.grpc_port), ("--http-port", config.http_port)]
    for flag, port in ports:
        if port is None:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, port))
            except OSError as exc:
                raise OSError(f"{flag} {port}: cannot bind {config.host} ({exc.strerror})") from None


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the parent dies, even by SIGKILL (no orphaned routers on the port)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(serve: Callable[[RouterConfig, str], int], config: RouterConfig, label: str, parent: int) -> None:
    _die_with_parent(parent)
    sys.exit(serve(config, label))


def serve_workers(config: RouterConfig, serve: Callable[[RouterConfig, str], int]) -> int:
    """Run `serve(worker_config, label)` in `config.workers` processes until a signal or a death.

    Returns 0 after a forwarded SIGTERM/SIGINT stopped every worker, 1 when a
    worker exited on its own (named on stderr; the others are stopped).
    `serve` must be a module-level function: workers are spawned, not forked.
    """
    check_ports_free(config)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker_main,
            args=(serve, worker_config(config, k), f"worker {k}", os.getpid()),
            name=f"helmrec-route-worker-{k}",
        )
        for k in range(config.workers)
    ]
    stopping = False

    def stop_all(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signal.SIGTERM)

    def reload_all(signum: int, frame: FrameType | None) -> None:
        for w in workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signal.SIGHUP)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_all)
    if config.backend_file is not None:  # each worker re-reads the file on SIGHUP
        signal.signal(signal.SIGHUP, reload_all)
    metrics_server = serve_summed_metrics(config)
    for w in workers:
        w.start()
    failed = False
    running = list(workers)
    while running:
        ended = wait([w.sentinel for w in running])
        for w in [w for w in running if w.sentinel in ended]:
            w.join()
            running.remove(w)
            if not stopping:
                print(
                    f"helmrec route: {w.name} (pid {w.pid}) exited with code {w.exitcode}; stopping the others",
                    file=sys.stderr,
                )
                failed = True
                stop_all(signal.SIGTERM, None)
    if metrics_server is not None:
        metrics_server.shutdown()  # type: ignore[attr-defined]
    return 1 if failed else 0
