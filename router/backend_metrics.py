"""Read what a backend says about its pool from its Prometheus metrics text.

The pool exports its state on Triton's metrics port (names fixed in the
project contracts). The router needs a handful: alpha, how many users' KV it
holds, how many it evicted, its queue; the KV hit counters are read too so the
tests and benchmarks can report the backends' own hit rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Triton's own gauge of requests waiting in a model's scheduler queue.
PENDING = "nv_inference_pending_request_count"


@dataclass(frozen=True)
class BackendReport:
    """One scrape of a backend's metrics; a field is None when the backend does not export it."""

    alpha: float | None = None
    kv_cached_users: float | None = None
    kv_evictions_total: float | None = None
    emb_evictions_total: float | None = None
    kv_requests_total: float | None = None
    kv_hits_total: float | None = None
    emb_lookups_total: float | None = None
    emb_hits_total: float | None = None
    pending_requests: float | None = None


_PLAIN = {
    "helmrec_kv_cached_users": "kv_cached_users",
    "helmrec_kv_requests_total": "kv_requests_total",
    "helmrec_kv_hits_total": "kv_hits_total",
    "helmrec_emb_lookups_total": "emb_lookups_total",
    "helmrec_emb_hits_total": "emb_hits_total",
}


def parse_report(text: str) -> BackendReport:
    """Sum each counter over its label sets (e.g. per model instance) into a report.

    Raises ValueError when the text is not Prometheus exposition format.
    """
    values: dict[str, float] = {}
    alphas: list[float] = []

    def add(field: str, value: float) -> None:
        values[field] = values.get(field, 0.0) + value

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "helmrec_pool_alpha":
                alphas.append(sample.value)
            elif sample.name in _PLAIN:
                add(_PLAIN[sample.name], sample.value)
            elif sample.name == "helmrec_evictions_total":
                side = sample.labels.get("side")
                if side in ("kv", "emb"):
                    add(f"{side}_evictions_total", sample.value)
            elif sample.name == PENDING:
                add("pending_requests", sample.value)
    if alphas:  # one pool per GPU: the node's alpha is their mean, not their sum
        values["alpha"] = sum(alphas) / len(alphas)
    return BackendReport(**values)
