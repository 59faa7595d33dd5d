"""Exact per-request timings of a load run, and the latency figures computed from them.

Locust keeps response times in whole milliseconds below 100 ms, which is the
whole range of a small model, so a P99 from its CSVs is quantised; the
locustfile logs every request here instead (perf_counter latency, wall-clock
start), and the benchmark computes P50/P99, SLO satisfaction and throughput
from this log only.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("start_unix_s", "latency_ms", "user_id", "history_len", "ok")


class LatencyLog:
    """Append-only log of one Locust process's requests (greenlets share it; appends never yield)."""

    def __init__(self) -> None:
        self._rows: list[tuple[float, float, int, int, bool]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, start_unix_s: float, latency_ms: float, user_id: int, history_len: int, ok: bool) -> None:
        self._rows.append((start_unix_s, latency_ms, user_id, history_len, ok))

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for start, ms, user, hist, ok in self._rows:
                out.writerow((f"{start:.6f}", f"{ms:.4f}", user, hist, int(ok)))


@dataclass(frozen=True)
class Latencies:
    """Columns of a latency log, sorted by start time; `t_s` is seconds from the first request."""

    start_unix_s: np.ndarray
    latency_ms: np.ndarray
    user_id: np.ndarray
    history_len: np.ndarray
    ok: np.ndarray

    @property
    def t_s(self) -> np.ndarray:
        return self.start_unix_s - self.start_unix_s[0] if len(self) else self.start_unix_s

    def __len__(self) -> int:
        return int(self.latency_ms.shape[0])

    def since(self, warmup_s: float) -> Latencies:
        """The requests sent `warmup_s` or more after the run's first one (the measured part)."""
        keep = self.t_s >= warmup_s
        return Latencies(
            self.start_unix_s[keep], self.latency_ms[keep], self.user_id[keep], self.history_len[keep], self.ok[keep]
        )


def part_path(path: str | os.PathLike[str], index: int) -> Path:
    """Where load-generator process `index` of several writes its share of the log at `path`
    (`latency.csv` -> `latency.part3.csv`): processes never share a file."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part{index}{path.suffix}")


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log at `path`, or else every process's part of it (none: an empty list)."""
    path = Path(path)
    if path.exists():
        return [path]
    return sorted(path.parent.glob(f"{path.stem}.part*{path.suffix}"))


def read_latencies(*paths: str | os.PathLike[str]) -> Latencies:
    """Load logs written by `LatencyLog.write_csv` (several: one run's parts, merged by start
    time); a wrong header is an error naming the file."""
    if not paths:
        raise ValueError("read_latencies: give at least one log file")
    rows: list[list[str]] = []
    for path in map(Path, paths):
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != COLUMNS:
                raise ValueError(f"{path}: header must be {','.join(COLUMNS)}, got {header}")
            rows += reader
    data = np.array(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
    order = np.argsort(data[:, 0], kind="stable")
    data = data[order]
    return Latencies(
        start_unix_s=data[:, 0],
        latency_ms=data[:, 1],
        user_id=data[:, 2].astype(np.int64),
        history_len=data[:, 3].astype(np.int64),
        ok=data[:, 4].astype(bool),
    )


@dataclass(frozen=True)
class LatencySummary:
    """The headline figures of one run. Failed requests count against the SLO, never in the percentiles."""

    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    slo_satisfaction: float
    throughput_rps: float


def summarize(lat: Latencies, slo_ms: float) -> LatencySummary:
    """P50/P99 of successful requests, share of all requests answered within `slo_ms`, requests/s."""
    if slo_ms <= 0:
        raise ValueError(f"slo_ms must be > 0, got {slo_ms}")
    n = len(lat)
    good = lat.latency_ms[lat.ok]
    span = float(lat.start_unix_s[-1] + lat.latency_ms[-1] / 1e3 - lat.start_unix_s[0]) if n else 0.0
    return LatencySummary(
        requests=n,
        failures=int(n - good.shape[0]),
        p50_ms=float(np.percentile(good, 50)) if good.size else float("nan"),
        p99_ms=float(np.percentile(good, 99)) if good.size else float("nan"),
        slo_satisfaction=float(np.count_nonzero(good <= slo_ms) / n) if n else float("nan"),
        throughput_rps=float(n / span) if span > 0 else float("nan"),
    )


@dataclass(frozen=True)
class LatencyTimeline:
    """Per-bin figures over a run: bin start (s from the first request), requests/s, P50 and P99 in ms."""

    t_s: np.ndarray
    rps: np.ndarray
    p50_ms: np.ndarray
    p99_ms: np.ndarray


def timeline(lat: Latencies, bin_s: float) -> LatencyTimeline:
    """Bin the run by request start; a bin without successful requests has NaN percentiles."""
    if bin_s <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    t = lat.t_s
    n_bins = int(np.floor(t[-1] / bin_s)) + 1 if len(lat) else 0
    idx = np.floor(t / bin_s).astype(np.int64)
    rps, p50, p99 = np.zeros(n_bins), np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for b in range(n_bins):
        in_bin = idx == b
        rps[b] = np.count_nonzero(in_bin) / bin_s
        good = lat.latency_ms[in_bin & lat.ok]
        if good.size:
            p50[b], p99[b] = np.percentile(good, 50), np.percentile(good, 99)
    return LatencyTimeline(t_s=np.arange(n_bins) * bin_s, rps=rps, p50_ms=p50, p99_ms=p99)
