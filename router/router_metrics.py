"""The router's own Prometheus metrics, read from its state at scrape time.

A collector instead of counters bumped on the request path: the hot path pays
nothing, and the figures are the dispatcher's own (no second bookkeeping). With
the native data plane the hop's counters (its last report) are added to them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from helmrec.router.dispatch import Dispatcher
from helmrec.router.native_hop import HopStats, NativeHop


class RouterCollector(Collector):
    def __init__(self, dispatcher: Dispatcher, hop: NativeHop | None = None) -> None:
        self.dispatcher = dispatcher
        self.hop = hop

    def collect(self) -> Iterator[Metric]:
        d = self.dispatcher
        hop = self.hop.stats if self.hop is not None else None
        stats = d.stats if hop is None else d.stats.plus(hop.router)
        counters = {
            "requests": ("inference requests received", stats.requests),
            "answered": ("inference requests answered by a backend", stats.answered),
            "retries": ("requests sent again after a backend failed before answering", stats.retries),
            "unavailable": ("requests refused with UNAVAILABLE", stats.unavailable),
            "overloaded": ("requests refused with RESOURCE_EXHAUSTED", stats.overloaded),
            "predicted_kv_hits": ("requests placed where the record says the user's prefix is", stats.predicted_kv_hits),
        }
        for name, (helptext, value) in counters.items():
            yield CounterMetricFamily(f"helmrec_router_{name}", helptext, value=value)
        gauges = {
            "in_flight": ("requests in flight at the backend", lambda i, b: b.in_flight + _slot(hop, "in_flight", i)),
            "healthy": ("1 while the backend is in rotation", lambda i, b: float(b.healthy)),
            "recorded_users": ("users whose prefix the record places at the backend", lambda i, b: len(b.kv)),
            "served": ("requests sent to the backend", lambda i, b: b.served + _slot(hop, "served", i)),
        }
        for name, (helptext, read) in gauges.items():
            family = GaugeMetricFamily(f"helmrec_router_backend_{name}", helptext, labels=["backend"])
            for index, backend in enumerate(d.backends):
                if backend.retired and not backend.in_flight:  # removed from the list and drained
                    continue
                family.add_metric([backend.name], float(read(index, backend)))
            yield family


def _slot(hop: HopStats | None, what: str, index: int) -> int:
    """The hop's last count of `what` ("in_flight" or "served") at backend slot `index` (0 without a hop)."""
    return 0 if hop is None else getattr(hop, what).get(index, 0)
