"""The simulator's prediction for a benchmarked run: the same trace through the same cluster, simulated.

`helmrec bench --costs TABLE` puts these figures beside each measured run, so the
real system and `helmrec sim` answer for one configuration: the trace the Locust
workers replay (same workload, seed and network limits), the nodes' pool budget,
page size, control window and starting alpha as the staged repository sets them,
the same router policy object and the same alpha controller. The node's service
times come from a cost table `helmrec calibrate` measured through `PooledRanker`
for the preset the nodes serve. What the table does not see (gRPC, the router
hop, the ensemble, the stub's hops) comes from the runs' probes (`Cluster.probe`,
one client, the smallest request, just before each run; `helmrec bench` pools
those of all its runs): their median less the table's service time of that
request is added to every simulated latency as `SimConfig.path_ms`, a delay
outside the node's queue. Contention for the host's
cores between the nodes, the router and Locust under load is not modelled.

Not modelled: `--keep-servers` runs inherit the caches and alpha of the shape run
before them on the same nodes; the simulation of every run starts cold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helmrec import schema
from helmrec.allocator import cost_table
from helmrec.allocator.controller import Controller
from helmrec.allocator.cost_model import CostModel
from helmrec.allocator.interface import Decider, StaticAlpha
from helmrec.allocator.node_model import NodeConfig
from helmrec.hstu.config import preset
from helmrec.launcher.repository import SOURCE
from helmrec.load.bench.run import RunSpec
from helmrec.load.sim.cluster import simulate
from helmrec.load.sim.config import SimConfig
from helmrec.load.sim.metrics import refused_share, summarize
from helmrec.model_config import get_parameter
from helmrec.workload.traces import generate

POOL_CONFIG = SOURCE / schema.POOL_MODEL / "config.pbtxt"


class PredictionError(ValueError):
    """The cost table cannot stand for the benchmarked nodes; the message says why."""


@dataclass(frozen=True)
class Costs:
    """A node cost table and what it was measured on."""

    model: CostModel
    preset: str
    device: str
    path: Path

    @classmethod
    def read(cls, path: Path) -> Costs:
        table = cost_table.read(path)
        return cls(CostModel.from_table(path), str(table["preset"]), str(table["device"]), path)

    def check(self, served_preset: str) -> None:
        """A table of another network would predict another network's service times."""
        if self.preset != served_preset:
            raise PredictionError(
                f"--costs {self.path}: measured on preset {self.preset!r}, the nodes serve {served_preset!r}; "
                f"measure theirs with `helmrec calibrate --preset {served_preset} --device ...`"
            )


def path_ms(probe_ms: tuple[float, ...], costs: Costs) -> float:
    """The served path's own milliseconds: the probe's median less what the cost table says
    its request (a KV hit of a one-event history, one candidate, its row a hit) costs the node."""
    if not probe_ms:
        return 0.0
    node_ms = float(costs.model.service_us(np.array(0.0), np.array(1.0), 1, np.array(0.0), np.array(1.0))) / 1e3
    return max(0.0, float(np.median(probe_ms)) - node_ms)


def sim_config(spec: RunSpec, costs: Costs, probe_ms: tuple[float, ...] = ()) -> SimConfig:
    """The simulated cluster of `spec`: its nodes as the staged repository configures them."""
    cluster = spec.cluster
    costs.check(cluster.preset)
    interval_s = float(get_parameter(POOL_CONFIG, "control_interval_ms")) / 1e3
    start_alpha = float(get_parameter(POOL_CONFIG, "alpha")) if cluster.adaptive else float(cluster.alpha)
    return SimConfig(
        nodes=cluster.nodes,
        duration_s=spec.workload.duration_s,
        warmup_s=spec.warmup_s,  # the run's unmeasured lead-in, here too
        interval_s=interval_s,
        node=NodeConfig(pool_bytes=cluster.pool_bytes, interval_s=interval_s, warmup_s=spec.warmup_s, cost=costs.model),
        page_bytes=cluster.page_bytes or int(get_parameter(POOL_CONFIG, "page_bytes")),
        refill_bytes_per_s=float(get_parameter(POOL_CONFIG, "refill_bandwidth_bytes_per_s")),
        slo_ms=spec.slo_ms,
        start_alpha=start_alpha,
        seed=spec.workload.seed,
        path_ms=path_ms(probe_ms, costs),
    )


def predict(spec: RunSpec, costs: Costs, probe_ms: tuple[float, ...] = ()) -> dict[str, float]:
    """The simulator's figures for `spec` (the keys of a measured run's summary.json entry,
    plus `mean_alpha`, `refused` and the `path_ms` it added)."""
    network = preset(spec.cluster.preset)
    num_items = spec.cluster.num_items or network.num_items
    trace = generate(spec.workload.trace_config(num_items, network.max_seq_len, network.max_candidates))
    config = sim_config(spec, costs, probe_ms)

    def decider() -> Decider:
        return Controller.load() if spec.cluster.adaptive else StaticAlpha(config.start_alpha)

    result = simulate(trace, config, spec.cluster.policy, decider)
    figures = summarize(result, trace, config)
    first = int(round(config.warmup_s / config.interval_s))
    figures["mean_alpha"] = float(np.mean(result.alpha[first:]))
    figures["refused"] = refused_share(result, trace, config)
    figures["path_ms"] = config.path_ms
    return figures
