"""The `helmrec` command: one entry point, one subcommand per component.

Each subcommand lives in the component that owns it and is imported only when
it is run, so `helmrec route` never pays for torch and `helmrec serve` never
pays for stable-baselines3. A subcommand module exposes two functions:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int      # the process exit code
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

# subcommand -> (module, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("helmrec.launcher.cli", "start the bundled tritonserver on a model repository"),
    "train-model": ("helmrec.hstu.train", "train the HSTU ml100k preset on MovieLens-100K"),
    "eval-model": ("helmrec.hstu.evaluate", "HR@10/NDCG@10 of the served model vs most-popular"),
    "export-onnx": ("helmrec.hstu.export", "export the prefill and rank graphs to ONNX"),
    "build-engine": ("helmrec.hstu.engine", "build TensorRT engines (model.plan) from the ONNX graphs"),
    "route": ("helmrec.router.cli", "the KServe-v2 front door for several Triton instances"),
    "train-allocator": ("helmrec.allocator.train", "train the PPO base policy offline on the node simulator"),
    "eval-allocator": ("helmrec.allocator.evaluate", "compare alpha controllers against the offline-optimal alpha"),
    "sim": ("helmrec.load.sim.cli", "discrete-event simulation of an N-node cluster"),
    "bench": ("helmrec.load.bench.cli", "local benchmark: N tritonservers, the router and a Locust run"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module is installed (components land one at a time)."""
    found = {}
    for name, (module, helptext) in COMMANDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[name] = (module, helptext)
        except ModuleNotFoundError:  # its parent package has not landed yet
            pass
    return found


def build_parser(commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helmrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, helptext) in commands.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    parser = build_parser(commands)
    # Let the chosen subcommand add its own arguments before the full parse.
    if argv and argv[0] in commands:
        module = importlib.import_module(commands[argv[0]][0])
        sub = parser._subparsers._group_actions[0].choices[argv[0]]  # type: ignore[union-attr]
        module.add_arguments(sub)
        args = parser.parse_args(argv)
        return int(module.run(args) or 0)
    parser.parse_args(argv)  # prints usage / error and exits
    return 2


if __name__ == "__main__":
    sys.exit(main())
