"""`make demo`: real MovieLens-100K users ranked by real tritonservers behind the router.

    python -m helmrec.load.demo --model-repository model_repository [--nodes 2] [--users 5] [--device cpu]

Starts `--nodes` bundled tritonservers on the repository (each its own pool)
and the router (`helm` policy) in front of them, then for a few users sends
their history (all but the last movie) with 20 candidates — the movie they
really watched next plus 19 they never rated — through the router over gRPC
and HTTP with stock tritonclient, prints the ranking with titles, then sends
each user's next request (history grown by the movie just watched, as a
returning user's would), and prints latencies and each node's KV hits, read
from its metrics port.
"""

from __future__ import annotations

import argparse
import re
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from rich.console import Console
from rich.table import Table

from helmrec import schema
from helmrec.hstu.data import UserHistory, load_ml100k, ml100k_path
from helmrec.launcher import TritonServer
from helmrec.launcher.repository import WEIGHTS, control_window_s
from helmrec.load.client import infer_inputs
from helmrec.router.config import BackendAddress, RouterConfig
from helmrec.router.server import RouterThread
from helmrec.serving.network import read_limits


def movie_titles() -> dict[int, str]:
    """Titles from the ml-100k.item file that ships beside the ratings."""
    path = ml100k_path().with_name("ml-100k.item")
    titles = {}
    for line in path.read_text(encoding="latin-1").splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 2:
            titles[int(cols[0])] = f"{cols[1]} ({cols[2]})" if len(cols) > 2 else cols[1]
    return titles


def request_arrays(user: UserHistory, candidates: np.ndarray) -> dict[str, np.ndarray]:
    return schema.ensemble_request(user.user_id, user.items, user.timestamps, candidates, user.actions)


def timed_infer(client, module, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    scores = client.infer(schema.ENSEMBLE_MODEL, infer_inputs(module, arrays)).as_numpy(schema.SCORES)
    return scores, (time.perf_counter() - t0) * 1e3


def kv_counts(metrics_url: str) -> dict[str, int]:
    """KV requests and hits a node reports on its metrics port, and its counterfactual hits
    (`more` / `less`: with a tenth of the pool more / less for KV)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    pattern = r'^helmrec_kv_(requests|hits|counterfactual_hits)_total(?:\{kv="(more|less)"\})? ([0-9.e+]+)$'
    return {side or name: int(float(value)) for name, side, value in re.findall(pattern, text, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--nodes", type=int, default=2, help="tritonservers behind the router")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    console = Console()

    limits = read_limits(args.model_repository / WEIGHTS)
    data = load_ml100k()
    titles = movie_titles()
    rng = np.random.default_rng(args.seed)
    users = [data.users[i] for i in rng.choice(len(data.users), args.users, replace=False)]

    console.print(f"[bold]starting {args.nodes} tritonserver(s) on {args.model_repository} and the router ...")
    with ExitStack() as stack:
        servers = [
            stack.enter_context(TritonServer(model_repository=args.model_repository, device=args.device))
            for _ in range(args.nodes)
        ]
        for i, server in enumerate(servers):
            console.print(f"node {i}: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
        backends = tuple(
            BackendAddress("127.0.0.1", s.grpc_port, s.http_port, s.metrics_port) for s in servers
        )
        router = stack.enter_context(RouterThread(RouterConfig(backends=backends, policy="helm"))).server
        console.print(f"router (helm): gRPC {router.grpc_url}, HTTP {router.http_url}")
        grpc = grpcclient.InferenceServerClient(router.grpc_url)
        http = httpclient.InferenceServerClient(router.http_url)
        # One warm-up request, so one-time start-up costs (lazy init, allocator growth) are not timed.
        # User 0 does not exist in MovieLens, so no demo user's cache entry is touched.
        warm = UserHistory(0, users[0].items[:2], users[0].timestamps[:2], users[0].actions[:2])
        timed_infer(grpc, grpcclient, request_arrays(warm, warm.items[:1]))
        first_ms, return_ms, ranks = [], [], []
        for user in users:
            n = len(user)
            # The request is made just before the user's last movie; it is one of the candidates.
            history = user.cut(n - 1, limits.max_seq_len)
            target = int(user.items[n - 1])
            unseen = np.setdiff1d(np.arange(1, data.num_items), user.items)
            candidates = np.concatenate([[target], rng.choice(unseen, args.candidates - 1, replace=False)])
            rng.shuffle(candidates)
            arrays = request_arrays(history, candidates)
            scores, ms = timed_infer(grpc, grpcclient, arrays)
            first_ms.append(ms)
            http_scores, _ = timed_infer(http, httpclient, arrays)
            assert np.allclose(scores, http_scores, atol=1e-5), "gRPC and HTTP disagree"
            order = np.argsort(-scores[:, 0])
            rank = int(np.flatnonzero(candidates[order] == target)[0]) + 1
            ranks.append(rank)
            table = Table(title=f"user {user.user_id}: {len(history)} movies of history, {len(candidates)} candidates")
            for col in ("rank", "movie", "next-item score", "high-rating score"):
                table.add_column(col)
            for pos, idx in enumerate(order[:5], start=1):
                item = int(candidates[idx])
                mark = " [green]<- watched next" if item == target else ""
                table.add_row(str(pos), titles.get(item, str(item)) + mark, f"{scores[idx, 0]:.3f}", f"{scores[idx, 1]:.3f}")
            console.print(table)
            console.print(f"  the movie watched next ranks {rank} of {len(candidates)} ({ms:.2f} ms over gRPC)")
            # The user returns: the movie just watched is now part of the history.
            grown = user.cut(n, limits.max_seq_len)
            _, ms = timed_infer(grpc, grpcclient, request_arrays(grown, candidates))
            return_ms.append(ms)
        time.sleep(1.5 * control_window_s(args.model_repository))  # nodes publish pool metrics once per window
        nodes = [kv_counts(server.metrics_url) for server in servers]

    summary = Table(title="latency over gRPC (ms)")
    for col in ("request", "median", "max"):
        summary.add_column(col)
    summary.add_row("first request of a user", f"{np.median(first_ms):.2f}", f"{np.max(first_ms):.2f}")
    summary.add_row("returning user (history + 1)", f"{np.median(return_ms):.2f}", f"{np.max(return_ms):.2f}")
    console.print(summary)
    for i, kv in enumerate(nodes):
        console.print(
            f"node {i}: {kv.get('hits', 0)} of {kv.get('requests', 0)} requests reused a cached KV prefix"
            f" ({kv.get('more', 0)} would have with a tenth of the pool more for KV, {kv.get('less', 0)} with a tenth less)"
        )
    console.print(
        f"mean rank of the movie watched next: {np.mean(ranks):.1f} of {args.candidates} "
        f"(a random order would give {(args.candidates + 1) / 2:.1f})"
    )


if __name__ == "__main__":
    main()
