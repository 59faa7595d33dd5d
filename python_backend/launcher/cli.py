"""`helmrec serve`: the bundled tritonserver on a model repository, in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from helmrec.launcher.binary import LauncherError
from helmrec.launcher.server import DEVICES, TritonServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", required=True, help="Triton model repository folder")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where hstu_pool runs (default: auto)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tritonserver", default=None, help="another tritonserver binary (the official container's)")
    parser.add_argument("--log-verbose", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    server = TritonServer(
        model_repository=args.model_repository,
        device=args.device,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        log_verbose=args.log_verbose,
    )
    stop = threading.Event()

    def _forward(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    try:
        server.start()
    except LauncherError as exc:
        print(f"helmrec serve: {exc}", file=sys.stderr)
        return 1
    print(f"tritonserver ready (pid {server.pid}, device {args.device})")
    print(f"  gRPC    {server.grpc_url}")
    print(f"  HTTP    http://{server.http_url}")
    print(f"  metrics {server.metrics_url}")
    print(f"  log     {server.log_path}")
    sys.stdout.flush()
    exited = threading.Event()
    threading.Thread(target=lambda: (server.wait(), exited.set()), daemon=True).start()
    while not stop.is_set() and not exited.is_set():
        stop.wait(0.5)
    if exited.is_set():
        print(f"tritonserver exited by itself:\n{server.log()[-4000:]}", file=sys.stderr)
        return 1
    print("stopping tritonserver ...")
    code = server.stop()
    print(f"tritonserver stopped (exit code {code})")
    return 0
