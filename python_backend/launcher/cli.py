"""`helmrec serve`: the bundled tritonserver on a model repository, in the foreground;
`helmrec init-repository`: a model repository to serve, outside any checkout."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from helmrec.launcher.admin import ENV as ADMIN_ENV
from helmrec.launcher.admin import RESTRICTED, AdminHeader
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
    parser.add_argument(
        "--admin-header",
        default=None,
        metavar="NAME=VALUE",
        help=f"header that opens the {', '.join(RESTRICTED)} APIs (default: ${ADMIN_ENV}; "
        "unset: a random one, so they stay closed); gRPC clients send it as triton-grpc-protocol-NAME. "
        "Inference, health and metadata are always open",
    )


def _admin_header(flag: str | None) -> AdminHeader | None:
    """The flag, else the environment (which keeps the secret out of `ps` for this process);
    None when the operator chose neither."""
    text = flag if flag is not None else os.environ.get(ADMIN_ENV)
    return AdminHeader.parse(text) if text else None


def run(args: argparse.Namespace) -> int:
    try:
        chosen = _admin_header(args.admin_header)
    except ValueError as exc:
        print(f"helmrec serve: --admin-header: {exc}", file=sys.stderr)
        return 1
    server = TritonServer(
        model_repository=args.model_repository,
        device=args.device,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        log_verbose=args.log_verbose,
        admin=chosen or AdminHeader.random(),
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
    opened_by = f"header {chosen.name}" if chosen else "nobody (no --admin-header)"
    print(f"  {', '.join(RESTRICTED)} APIs open to: {opened_by}")
    sys.stdout.flush()
    exited = threading.Event()
    threading.Thread(target=lambda: (server.wait(), exited.set()), daemon=True).start()
    while not stop.is_set() and not exited.is_set():
        stop.wait(0.5)
    if exited.is_set():
        code = server.stop()  # its stubs and shared memory are gone by now; this releases the rest
        print(f"tritonserver exited by itself (exit code {code}):\n{server.log()[-4000:]}", file=sys.stderr)
        return 1
    print("stopping tritonserver ...")
    code = server.stop()
    print(f"tritonserver stopped (exit code {code})")
    return 0


def init_repository(argv: list[str] | None = None) -> int:
    """Write a servable model repository (packaged configs and shims, plus weights) into a new folder.

    The weights are a seeded untrained network of a preset, or a given trained file.
    An installed wheel ships no weights, so this is how a user gets a first repository."""
    from helmrec.hstu.config import PRESETS  # torch-free

    parser = argparse.ArgumentParser(prog="helmrec init-repository", description=init_repository.__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the folder to create (must not exist)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="size of the seeded untrained network (default: tiny)")
    source.add_argument("--weights", type=Path, help="a trained weights.pt (`helmrec train-model --out`) to copy instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained network (default: 0)")
    args = parser.parse_args(argv)
    if args.directory.exists():
        parser.error(f"{args.directory} already exists; init-repository creates a new folder")
    # torch comes in only here, so `helmrec serve` stays light.
    from helmrec.hstu.weights import load
    from helmrec.launcher.repository import WEIGHTS, stage_repository

    if args.weights is not None:
        try:
            load(args.weights)  # a missing or foreign file is refused before anything is written
        except Exception as exc:  # torch.load raises many kinds on a file that is not its own
            parser.error(f"--weights: {args.weights} is not a loadable HSTU weights file ({type(exc).__name__}: {exc})")
        stage_repository(args.directory, preset_name=None)
        shutil.copyfile(args.weights, args.directory / WEIGHTS)
        print(f"{args.directory}: model repository with the weights of {args.weights}")
    else:
        stage_repository(args.directory, preset_name=args.preset, seed=args.seed)
        print(f"{args.directory}: model repository with an untrained {args.preset} network (seed {args.seed})")
    return 0
