"""Pool metrics of every node over a run, scraped from Triton's metrics ports.

The nodes publish alpha and the cache counters (names fixed by the project's
contracts) every control interval; a background thread scrapes each node at
`interval_s`, so the report can plot alpha over time and compute each node's
hit rates from counter deltas over the run (counters are cumulative since the
server started, and warm-up requests precede the run).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from helmrec.router.backend_metrics import BackendReport, parse_report


@dataclass(frozen=True)
class MetricsSample:
    """One scrape of one node; `t_unix_s` is when the scrape returned."""

    t_unix_s: float
    node: int
    report: BackendReport


def scrape(url: str, timeout_s: float = 2.0) -> BackendReport:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback metrics port
        return parse_report(resp.read().decode())


class MetricsPoller:
    """Scrapes every node every `interval_s` on a daemon thread until `stop()`.

    Nodes publish their counters once per control window; `settle_s` (more than
    one window) is waited before the first and the last scrape, so their
    difference holds exactly the run's requests.

    A failed scrape is counted, not fatal: a node busy under a burst may miss
    one, and the report says how many were missed.
    """

    def __init__(self, urls: list[str], interval_s: float, settle_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"MetricsPoller.interval_s must be > 0, got {interval_s}")
        if settle_s < 0:
            raise ValueError(f"MetricsPoller.settle_s must be >= 0, got {settle_s}")
        self.urls = urls
        self.interval_s = interval_s
        self.settle_s = settle_s
        self.samples: list[MetricsSample] = []
        self.failed_scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helmrec-bench-metrics", daemon=True)

    def poll_once(self) -> None:
        for node, url in enumerate(self.urls):
            try:
                report = scrape(url)
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                self.failed_scrapes += 1
                continue
            self.samples.append(MetricsSample(time.time(), node, report))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def start(self) -> MetricsPoller:
        time.sleep(self.settle_s)  # requests before the run (warm-up) are published by now
        self.poll_once()  # the baseline the run's counter deltas start from
        self._thread.start()
        return self

    def stop(self) -> list[MetricsSample]:
        self._stop.set()
        self._thread.join(timeout=10)
        time.sleep(self.settle_s)  # the run's last requests are published by now
        self.poll_once()  # the counters after the last request
        return self.samples


@dataclass(frozen=True)
class CacheTotals:
    """Hit rates over a run: counter deltas between the first and last scrape, summed over nodes."""

    emb_hit_rate: float
    kv_hit_rate: float
    mean_alpha: float


def _delta(first: BackendReport, last: BackendReport, field: str) -> float:
    """Counter increase between two scrapes. A counter a node has not exported yet has counted
    nothing yet (Triton shows a custom metric only once it is first set): it starts at 0."""
    a, b = getattr(first, field), getattr(last, field)
    return 0.0 if b is None else b - (a or 0.0)


def cache_totals(samples: list[MetricsSample] | tuple[MetricsSample, ...], since_unix_s: float = 0.0) -> CacheTotals:
    """EMB and KV hit rates and the time-averaged alpha over all nodes (NaN when unknown), from
    `since_unix_s` on: each node's counters from its last scrape at or before then (its first if
    none) to its last."""
    nodes = sorted({s.node for s in samples})
    sums = {"emb_lookups_total": 0.0, "emb_hits_total": 0.0, "kv_requests_total": 0.0, "kv_hits_total": 0.0}
    for node in nodes:
        mine = [s for s in samples if s.node == node]
        before = [s for s in mine if s.t_unix_s <= since_unix_s]
        first = before[-1] if before else mine[0]
        for field in sums:
            sums[field] += _delta(first.report, mine[-1].report, field)
    alphas = [s.report.alpha for s in samples if s.report.alpha is not None and s.t_unix_s >= since_unix_s]
    nan = float("nan")
    return CacheTotals(
        emb_hit_rate=sums["emb_hits_total"] / sums["emb_lookups_total"] if sums["emb_lookups_total"] else nan,
        kv_hit_rate=sums["kv_hits_total"] / sums["kv_requests_total"] if sums["kv_requests_total"] else nan,
        mean_alpha=sum(alphas) / len(alphas) if alphas else nan,
    )
