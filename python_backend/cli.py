"""The `helmrec` command: one entry point, one subcommand per component or tool.

Each subcommand lives in the component that owns it and is imported only when
it is run, so `helmrec route` never pays for torch and `helmrec serve` never
pays for stable-baselines3. A subcommand is one of two kinds:

    COMMANDS: a module with add_arguments(parser) and run(args) -> exit code,
              parsed here;
    TOOLS:    a "module:function" whose function(argv) parses the rest of the
              line itself (its own argparse), so `helmrec bench-gpu --help`
              prints the tool's own help.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("helmrec.launcher.cli", "start the bundled tritonserver on a model repository"),
    "train-model": ("helmrec.hstu.train", "train the HSTU ml100k preset on MovieLens-100K"),
    "eval-model": ("helmrec.hstu.evaluate", "HR@10/NDCG@10 of the served model vs most-popular"),
    "export-onnx": ("helmrec.hstu.export", "export the prefill and rank graphs to ONNX"),
    "build-engine": ("helmrec.hstu.engine", "build TensorRT engines (model.plan) from the ONNX graphs"),
    "route": ("helmrec.router.cli", "the KServe-v2 front door for several Triton instances"),
    "train-allocator": ("helmrec.load.sim.train_allocator", "train the PPO base policy on the replayed node"),
    "eval-allocator": ("helmrec.load.sim.eval_allocator", "compare alpha controllers against the replay's alpha*"),
    "sim": ("helmrec.load.sim.cli", "discrete-event simulation of an N-node cluster"),
    "sim-map": ("helmrec.load.sim.adaptation_map", "where adaptive alpha pays: pool x hot share x history length"),
    "bench": ("helmrec.load.bench.cli", "local benchmark: N tritonservers, the router and a Locust run"),
}

# subcommand -> ("module:function", one-line help)
TOOLS: dict[str, tuple[str, str]] = {
    "init-repository": ("helmrec.launcher.cli:init_repository", "write a servable model repository (configs, shims, weights)"),
    "bench-gpu": ("helmrec.load.bench.gpu:main", "HSTU on the GPU: KV-hit vs full-prefill latency, kernel TFLOP/s, throughput"),
    "bench-pool": ("helmrec.load.bench.pool:main", "the shared pool under a Zipf workload: hit rate vs alpha, latency by KV"),
    "bench-router": ("helmrec.load.bench.router:main", "what the router costs: added latency and its throughput ceiling"),
    "bench-serving": ("helmrec.load.bench.serving:main", "latency of hstu_ensemble through a real tritonserver vs in-process"),
    "bench-model": ("helmrec.load.bench.model:main", "cached vs uncached HSTU inference on one device: equivalence and speed"),
    "bench-served": (
        "helmrec.load.bench.served:main",
        "served req/s of hstu_ensemble under closed-loop load vs the in-process ceiling",
    ),
    "bench-loadgen": (
        "helmrec.load.bench.loadgen:main",
        "MLPerf LoadGen Server scenario on hstu_ensemble: the largest VALID QPS",
    ),
    "calibrate": ("helmrec.load.bench.calibrate:main", "per-request costs through PooledRanker: a cost table for the simulators"),
    "bound": ("helmrec.allocator.bound:main", "how close to alpha* a controller that sees a given signal can get"),
    "replay": ("helmrec.load.sim.replay:main", "the simulator's KV hit rates against an exact replay of the same trace"),
}


def package_version() -> str:
    """The installed distribution's version; a source tree that was never installed has none."""
    try:
        return version("helmrec")
    except PackageNotFoundError:
        return "0+unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helmrec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"helmrec {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, helptext) in COMMANDS.items():
        sub.add_parser(name, help=helptext, description=helptext).set_defaults(_module=module)
    for name, (_, helptext) in TOOLS.items():
        # Listed for `helmrec --help` only: main() hands these their arguments before parsing.
        sub.add_parser(name, help=helptext, add_help=False)
    return parser


def run_tool(name: str, argv: list[str]) -> int:
    """Call the tool's function with the rest of the line; its parser prints `helmrec NAME` in usage."""
    module_name, function = TOOLS[name][0].split(":")
    tool = getattr(importlib.import_module(module_name), function)
    program = sys.argv[0]
    sys.argv[0] = f"helmrec {name}"  # argparse's default prog is the basename of sys.argv[0]
    try:
        return int(tool(argv) or 0)
    finally:
        sys.argv[0] = program


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    parser = build_parser()
    # Let the chosen subcommand add its own arguments before the full parse.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        sub = parser._subparsers._group_actions[0].choices[argv[0]]  # type: ignore[union-attr]
        module.add_arguments(sub)
        args = parser.parse_args(argv)
        return int(module.run(args) or 0)
    parser.parse_args(argv)  # prints the version, usage or an error, and exits
    return 2


if __name__ == "__main__":
    sys.exit(main())
