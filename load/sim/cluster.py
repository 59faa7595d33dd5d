"""The discrete-event loop: a trace's requests routed over N simulated nodes by a real routing policy.

Events are request arrivals (the trace, in time order), request completions
(a heap keyed by completion time) and control ticks (every `interval_s`).
Before each arrival every completion up to its time is delivered, exactly
where the live router calls `release`/`on_done`; at each tick every node's
window closes, the router scrapes what a backend's metrics port would say
(alpha, pending requests, KV cached users and evictions, as `helmrec.router.health`
does), and the node's controller decides the next alpha from the window's
`Observation`. The routing policy objects and `BackendState`s are the ones
`helmrec route` uses, unchanged.

Replicas: with `replicas=R` the trace is dealt round-robin to R independent
routers (as a TCP balancer in front of `helmrec route --workers R` would),
each with its own policy object and its own `BackendState`s; every replica
scrapes the same node reports, and a completion is released on the replica
that placed it. The nodes' KV hits are the truth that the replicas' agreement
(or not) produces.

Candidates: the router's EMB sketch reads at most 64 evenly strided candidate
ids of a request (`helmrec.router.emb_locality.sample`). The simulator hands it 64 ids
drawn from the trace's own item law (`Trace.items`) for each
request, vectorised per chunk: materialising all 512 through
`Trace.candidate_ids` costs about a millisecond a request.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from helmrec.allocator.interface import Decider
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.node import SimNode
from helmrec.router.emb_locality import MAX_SAMPLED_ITEMS
from helmrec.router.policies import AllBackendsBusy, make_policy
from helmrec.router.state import BackendState, RouteRequest
from helmrec.workload.traces import Trace

_CHUNK = 32768  # requests whose routing candidates are drawn in one vectorised batch


@dataclass(frozen=True)
class RunResult:
    """Per-request outcomes and per-window alphas of one simulated run."""

    latency_ms: np.ndarray  # [n] float64, NaN for requests the router refused
    node: np.ndarray  # [n] int32, -1 when refused
    kv_hit: np.ndarray  # [n] bool
    emb_lookups: np.ndarray  # [n] float32 row lookups
    emb_hits: np.ndarray  # [n] float32 expected row hits
    done_s: np.ndarray  # [n] float64 completion time, inf when refused
    alpha: np.ndarray  # [windows, nodes] alpha in force during each control window
    wall_s: float  # seconds the simulation took


def routing_candidates(trace: Trace, start: int, stop: int, seed: int) -> np.ndarray:
    """[stop - start, 64] candidate ids from the trace's item law, reproducible per (seed, chunk)."""
    rng = np.random.default_rng([seed, start])
    u = rng.random((stop - start) * MAX_SAMPLED_ITEMS)
    u.sort()  # sorted queries walk the 5M-entry CDF in order: ~20x faster than random ones
    rank = trace.items.rank_of_uniform(u)
    rng.shuffle(rank)
    return trace.items.id_of_rank(rank).reshape(stop - start, MAX_SAMPLED_ITEMS)


def simulate(
    trace: Trace, config: SimConfig, router: str, make_decider: Callable[[], Decider], replicas: int = 1
) -> RunResult:
    """Run `trace` through `config.nodes` nodes routed by policy `router` in `replicas` independent
    routers (request i to replica i mod replicas), one fresh decider per node."""
    if replicas < 1:
        raise ValueError(f"simulate: replicas must be >= 1, got {replicas}")
    started = time.perf_counter()
    n = len(trace)
    num_nodes = config.nodes
    interval = config.interval_s
    nodes = [SimNode(config, trace.items, trace.config.candidates, config.start_alpha) for _ in range(num_nodes)]
    states = [
        [BackendState(name=f"node{j}", max_in_flight=config.max_in_flight) for j in range(num_nodes)]
        for _ in range(replicas)
    ]
    policies = [make_policy(router, replicas) for _ in range(replicas)]
    deciders = [make_decider() for _ in range(num_nodes)]
    windows = int(round(trace.config.duration_s / interval))
    alpha = np.zeros((windows, num_nodes))
    alpha[0] = config.start_alpha

    latency = np.full(n, np.nan)
    node_of = np.full(n, -1, dtype=np.int32)
    kv_hit = np.zeros(n, dtype=bool)
    emb_lookups = np.zeros(n, dtype=np.float32)
    emb_hits = np.zeros(n, dtype=np.float32)
    done_s = np.full(n, np.inf)
    heap: list[tuple[float, int, int, RouteRequest]] = []

    def deliver(until: float) -> None:
        while heap and heap[0][0] <= until:
            _, i, j, req = heapq.heappop(heap)
            states[i % replicas][j].release()
            policies[i % replicas].on_done(req, j, True, states[i % replicas])

    def tick(k: int) -> None:
        """Close window k-1 at time k * interval on every node; set alphas for window k."""
        now = k * interval
        deliver(now)
        for j, node in enumerate(nodes):
            obs = node.observation(now, interval)
            for replica in states:  # every replica scrapes the same report
                b = replica[j]
                b.alpha = node.pool.alpha
                b.queue_depth = obs.queue_depth
                b.kv.observe_backend(float(node.pool.cached_users), float(node.pool.kv_evictions_total))
            a = float(deciders[j].decide(obs))
            node.pool.set_alpha(a, now)
            if k < windows:
                alpha[k, j] = a

    t_list = trace.t_s.tolist()
    users = trace.user_id.tolist()
    hist = trace.history_len.tolist()
    next_k = 1
    cands = routing_candidates(trace, 0, min(_CHUNK, n), config.seed)
    for i in range(n):
        if i % _CHUNK == 0 and i:
            cands = routing_candidates(trace, i, min(i + _CHUNK, n), config.seed)
        t = t_list[i]
        while t >= next_k * interval:
            tick(next_k)
            next_k += 1
        deliver(t)
        req = RouteRequest(user_id=users[i], history_len=hist[i], candidates=cands[i % _CHUNK])
        policy, backends = policies[i % replicas], states[i % replicas]
        try:
            j = policy.choose(req, backends)
        except AllBackendsBusy:
            continue  # RESOURCE_EXHAUSTED to the client: counted as an SLO miss
        backends[j].admit(req)
        policy.on_placed(req, j, backends)
        done, hit, lookups, hit_p = nodes[j].serve(t, req.user_id, hist[i])
        heapq.heappush(heap, (done, i, j, req))
        latency[i] = (done - t) * 1e3 + config.path_ms
        node_of[i] = j
        kv_hit[i] = hit
        emb_lookups[i] = lookups
        emb_hits[i] = lookups * hit_p
        done_s[i] = done
    while next_k < windows:
        tick(next_k)
        next_k += 1
    return RunResult(latency, node_of, kv_hit, emb_lookups, emb_hits, done_s, alpha, time.perf_counter() - started)
