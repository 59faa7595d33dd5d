"""Pool statistics as Triton custom metrics on the metrics port.

`metric_values` is the whole mapping from a `PoolStats` window to metric
values (pure, unit-tested); `PoolMetrics` only pushes those values into the
metric families Triton gives us. Triton passes `pb_utils.MetricFamily` as the
family class, so this module never imports `triton_python_backend_utils`
itself and stays importable outside the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from helmrec.pool.stats import PoolStats

MetricKey = tuple[str, tuple[tuple[str, str], ...]]  # (name, sorted label pairs)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "counter" (value = increment for the window) or "gauge" (value = current)
    description: str


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("helmrec_pool_alpha", "gauge", "share of pool pages held by the embedding cache"),
    MetricSpec("helmrec_pool_pages", "gauge", "pool pages held per side (emb, kv)"),
    MetricSpec("helmrec_emb_lookups_total", "counter", "embedding rows looked up in the pool"),
    MetricSpec("helmrec_emb_hits_total", "counter", "embedding rows served from pool pages"),
    MetricSpec("helmrec_kv_requests_total", "counter", "requests that looked up a user KV prefix"),
    MetricSpec("helmrec_kv_hits_total", "counter", "requests that reused a cached KV prefix (full or partial)"),
    MetricSpec(
        "helmrec_kv_counterfactual_hits_total",
        "counter",
        "requests that would have reused a KV prefix with a tenth of the pool more / less for KV (kv: more, less)",
    ),
    MetricSpec("helmrec_kv_tokens_total", "counter", "history tokens of all requests"),
    MetricSpec("helmrec_kv_hit_tokens_total", "counter", "history tokens served from cached KV"),
    MetricSpec("helmrec_evictions_total", "counter", "evictions per side (emb: rows, kv: user prefixes)"),
    MetricSpec("helmrec_h2d_bytes_total", "counter", "host-to-device bytes by kind (critical path, background)"),
    MetricSpec("helmrec_kv_cached_users", "gauge", "users with a cached KV prefix"),
    MetricSpec("helmrec_controller_decision_us", "gauge", "latency of the last alpha decision in microseconds"),
)
_KIND = {spec.name: spec.kind for spec in SPECS}


def metric_values(stats: PoolStats, alpha: float, decision_us: float | None = None) -> dict[MetricKey, float]:
    """Gauge values to set and counter increments for one stats window.

    `decision_us` is the controller's; it is left out when no controller has
    decided yet, so the gauge is not reported as a misleading 0.
    """
    values: dict[MetricKey, float] = {
        ("helmrec_pool_alpha", ()): float(alpha),
        ("helmrec_pool_pages", (("side", "emb"),)): float(stats.emb_pages),
        ("helmrec_pool_pages", (("side", "kv"),)): float(stats.kv_pages),
        ("helmrec_emb_lookups_total", ()): float(stats.emb_lookups),
        ("helmrec_emb_hits_total", ()): float(stats.emb_hits),
        ("helmrec_kv_requests_total", ()): float(stats.kv_requests),
        ("helmrec_kv_hits_total", ()): float(stats.kv_hits),
        ("helmrec_kv_counterfactual_hits_total", (("kv", "more"),)): float(stats.kv_hits_more),
        ("helmrec_kv_counterfactual_hits_total", (("kv", "less"),)): float(stats.kv_hits_less),
        ("helmrec_kv_tokens_total", ()): float(stats.kv_tokens),
        ("helmrec_kv_hit_tokens_total", ()): float(stats.kv_hit_tokens),
        ("helmrec_evictions_total", (("side", "emb"),)): float(stats.emb_evictions),
        ("helmrec_evictions_total", (("side", "kv"),)): float(stats.kv_evictions),
        ("helmrec_h2d_bytes_total", (("kind", "critical"),)): float(stats.h2d_critical_bytes),
        ("helmrec_h2d_bytes_total", (("kind", "background"),)): float(stats.h2d_background_bytes),
        ("helmrec_kv_cached_users", ()): float(stats.kv_cached_users),
    }
    if decision_us is not None:
        values[("helmrec_controller_decision_us", ())] = float(decision_us)
    return values


class PoolMetrics:
    """Owns one metric family per name; `update` applies one `PoolStats` window."""

    def __init__(self, metric_family_cls: Any) -> None:
        kinds = {"counter": metric_family_cls.COUNTER, "gauge": metric_family_cls.GAUGE}
        self._families = {
            spec.name: metric_family_cls(name=spec.name, description=spec.description, kind=kinds[spec.kind])
            for spec in SPECS
        }
        self._metrics: dict[MetricKey, Any] = {}

    def update(self, stats: PoolStats, decision_us: float | None = None) -> None:
        for key, value in metric_values(stats, stats.alpha, decision_us).items():
            metric = self._metrics.get(key)
            if metric is None:
                name, labels = key
                metric = self._metrics[key] = self._families[name].Metric(labels=dict(labels))
            if _KIND[key[0]] == "counter":
                if value:
                    metric.increment(value)
            else:
                metric.set(value)
