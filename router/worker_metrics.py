"""The router's own metrics summed over `--workers`: one scrape of `--metrics-port` sees the whole router.

Each worker keeps its counters in its own memory and serves them privately on
`--metrics-port + 1 + k`; the parent serves `--metrics-port` with this
collector, which scrapes every worker at the parent's scrape time and adds the
samples up (same metric, same labels). Nothing is shared between processes, so
a worker that dies cannot leave a half-written counter behind, and there is no
lock on the request path. How each family combines:

- counters (`helmrec_router_*_total`) and the per-backend `in_flight` and
  `served`: summed, the router's total;
- `helmrec_router_backend_healthy`: the minimum, 1 only when every worker has
  the backend in rotation (a worker that saw it fail is not hidden);
- `helmrec_router_backend_recorded_users`: the maximum, since each worker
  records the same users' homes from the share of traffic it took, and the
  sum would count a user once per worker;
- `helmrec_router_workers_scraped`: how many workers answered this scrape
  (fewer than `--workers` means the figures miss one).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

COMBINE: dict[str, Callable[[float, float], float]] = {
    "helmrec_router_backend_healthy": min,
    "helmrec_router_backend_recorded_users": max,
}
SCRAPE_TIMEOUT_S = 2.0


def worker_metrics_port(metrics_port: int, index: int) -> int:
    """Worker `index`'s private metrics port; the parent serves `metrics_port` itself."""
    return metrics_port + 1 + index


def merge(texts: Sequence[str]) -> list[Metric]:
    """Families of several Prometheus texts, samples with the same name and labels combined."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            combine = COMBINE.get(family.name, lambda a, b: a + b)
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = combine(samples[key], sample.value) if key in samples else sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class WorkersCollector(Collector):
    """Scrapes the workers' private endpoints and serves their merged figures."""

    def __init__(self, host: str, ports: Sequence[int]) -> None:
        self.urls = [f"http://{host}:{port}/metrics" for port in ports]

    @staticmethod
    def _scrape(url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
                return resp.read().decode()
        except OSError:
            return None

    def collect(self) -> Iterator[Metric]:
        with ThreadPoolExecutor(len(self.urls)) as pool:
            texts = [t for t in pool.map(self._scrape, self.urls) if t is not None]
        yield from merge(texts)
        yield GaugeMetricFamily(
            "helmrec_router_workers_scraped", "router workers whose metrics this scrape includes", value=len(texts)
        )
