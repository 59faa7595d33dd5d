"""`helmrec route`: the KServe-v2 front door for several Triton instances, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from helmrec.router.backend_file import parse_backend_file
from helmrec.router.config import DATA_PLANES, POLICIES, PUBLIC_MODELS, BackendAddress, ConfigError, RouterConfig
from helmrec.router.limits import MAX_CANDIDATES, MAX_HISTORY_LEN, request_bytes_bound
from helmrec.router.server import RouterServer
from helmrec.router.workers import serve_workers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    backends = parser.add_mutually_exclusive_group(required=True)
    backends.add_argument(
        "--backend",
        action="append",
        metavar="HOST:GRPC_PORT[,http=PORT][,metrics=PORT]",
        help="a Triton instance (repeat for each); http= lets HTTP clients reach it, metrics= feeds routing",
    )
    backends.add_argument(
        "--backend-file",
        metavar="PATH",
        help="the backends, one --backend spec a line (# comments); re-read when it changes and on SIGHUP, "
        "no restart: added ones are probed and used, removed ones drain; a bad file keeps the last good list",
    )
    parser.add_argument(
        "--backend-file-interval", type=float, default=1.0, help="seconds between checks of --backend-file for a change"
    )
    parser.add_argument("--policy", choices=POLICIES, default="helm")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="router processes sharing the gRPC and HTTP ports (SO_REUSEPORT); worker k's own metrics "
        "are on --metrics-port + k; a worker that dies stops them all (exit 1)",
    )
    parser.add_argument(
        "--data-plane",
        choices=DATA_PLANES,
        default="python",
        help="native: the helmrec-hop binary (grpc++, `make hop`) serves gRPC ModelInfer, this process the rest; "
        "one process using every core, so no --workers",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000, help="-1: no HTTP front door")
    parser.add_argument("--metrics-port", type=int, default=None, help="the router's own Prometheus metrics")
    parser.add_argument("--max-in-flight", type=int, default=64, help="per backend; past it: RESOURCE_EXHAUSTED")
    parser.add_argument("--health-interval", type=float, default=0.5, help="seconds between readiness probes")
    parser.add_argument("--metrics-interval", type=float, default=1.0, help="seconds between metrics scrapes")
    parser.add_argument(
        "--max-history",
        type=int,
        default=MAX_HISTORY_LEN,
        help="the served model's longest history; sizes the request limit (default: the largest preset's)",
    )
    parser.add_argument(
        "--max-candidates",
        type=int,
        default=MAX_CANDIDATES,
        help="the served model's most candidates; sizes the request limit (default: the largest preset's)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=None,
        help="largest HTTP body / gRPC message let in (default: the largest valid request as JSON, "
        "from --max-history and --max-candidates); past it: 413 / RESOURCE_EXHAUSTED",
    )
    parser.add_argument("--body-timeout", type=float, default=10.0, help="seconds an HTTP body may take to arrive")
    parser.add_argument(
        "--expose-model",
        action="append",
        default=None,
        metavar="NAME",
        help=f"a model clients may call through the router (repeat; default: {' '.join(PUBLIC_MODELS)} only)",
    )


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    try:
        derived = request_bytes_bound(args.max_history, args.max_candidates)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.backend_file is not None:
        backends = parse_backend_file(Path(args.backend_file))
    else:
        backends = tuple(BackendAddress.parse(spec) for spec in args.backend)
    return RouterConfig(
        backends=backends,
        backend_file=args.backend_file,
        backend_file_interval_s=args.backend_file_interval,
        policy=args.policy,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=None if args.http_port < 0 else args.http_port,
        metrics_port=args.metrics_port,
        max_in_flight_per_backend=args.max_in_flight,
        health_interval_s=args.health_interval,
        metrics_interval_s=args.metrics_interval,
        max_request_bytes=derived if args.max_request_bytes is None else args.max_request_bytes,
        body_timeout_s=args.body_timeout,
        exposed_models=tuple(args.expose_model or PUBLIC_MODELS),
        workers=args.workers,
        data_plane=args.data_plane,
    )


async def _serve(config: RouterConfig, label: str) -> None:
    server = RouterServer(config)
    try:
        await server.start()
    except OSError:
        await server.stop()
        raise
    healthy = sum(b.healthy for b in server.dispatcher.backends)
    name = f"router {label}" if label else "router"
    listed = len(server.dispatcher.listed())
    print(
        f"{name} ready (pid {os.getpid()}, policy {config.policy}, {config.data_plane} data plane, "
        f"{healthy}/{listed} backends healthy)"
    )
    print(f"  gRPC    {server.grpc_url}")
    if server.http_port is not None:
        print(f"  HTTP    http://{server.http_url}")
    if server.metrics_port is not None:
        print(f"  metrics http://{config.host}:{server.metrics_port}/metrics")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if server.watcher is not None:
        loop.add_signal_handler(signal.SIGHUP, server.watcher.reload)
    waits = [asyncio.create_task(stop.wait())]
    if server.hop is not None:
        waits.append(asyncio.create_task(server.hop.exited.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    hop_died = not stop.is_set()
    print(f"stopping {name} ...")
    await server.stop()
    if hop_died:
        raise OSError("the native hop exited: the router stopped with it")


def serve_one(config: RouterConfig, label: str = "") -> int:
    """One router process in the foreground (the whole router, or one of --workers)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(config, label))
    except OSError as exc:
        print(f"helmrec route: {label + ': ' if label else ''}{exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"helmrec route: {exc}", file=sys.stderr)
        return 2
    if config.workers == 1:
        return serve_one(config)
    try:
        return serve_workers(config, serve_one)
    except OSError as exc:
        print(f"helmrec route: {exc}", file=sys.stderr)
        return 1
