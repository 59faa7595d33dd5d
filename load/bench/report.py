"""What a benchmark leaves behind: per-run report.md, timeline CSV and plots, and the comparison.

Files (stable names, so docs and CI can link them):
  <run>/report.md, <run>/timeline.csv, <run>/latency.png, <run>/alpha.png  per run
  report.md, runs.csv, summary.json                                       at the top of --out
summary.json follows the `helmrec sim --json` shape of docs/reports.md so the real
and the simulated cluster can be read by the same code:
  {"nodes": n, "slo_ms": f, "regimes": {REGIME: {"p99_reduction_vs_best_static": f,
   "slo_satisfaction": f, "best_static_alpha": f, "policies": {LABEL: {"p50_ms": f, "p99_ms": f,
   "slo_satisfaction": f, "throughput_rps": f, "emb_hit": f, "kv_hit": f, "failures": n,
   "predicted": {...}}}}}}
"predicted" (with `--costs`): the simulator's figures for the same run (`helmrec.load.bench.predict`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; the benchmark never opens a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from helmrec.load.bench.latency import timeline  # noqa: E402
from helmrec.load.bench.run import RunResult  # noqa: E402

TIMELINE_BIN_S = 1.0


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# -- one run ---------------------------------------------------------------------------------
def alpha_series(result: RunResult) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """node -> (seconds from the run's first request, alpha) of every scrape that reported alpha."""
    t0 = float(result.latencies.start_unix_s[0])
    out: dict[int, tuple[list[float], list[float]]] = {}
    for s in result.samples:
        if s.report.alpha is not None:
            ts, alphas = out.setdefault(s.node, ([], []))
            ts.append(s.t_unix_s - t0)
            alphas.append(s.report.alpha)
    return {node: (np.array(ts), np.array(a)) for node, (ts, a) in sorted(out.items())}


def write_run(result: RunResult) -> None:
    """report.md, timeline.csv, latency.png and alpha.png in the run's folder."""
    out = result.out_dir
    tl = timeline(result.latencies, TIMELINE_BIN_S)
    with (out / "timeline.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "rps", "p50_ms", "p99_ms"))
        for row in zip(tl.t_s, tl.rps, tl.p50_ms, tl.p99_ms):
            w.writerow(tuple(f"{v:.4f}" for v in row))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(tl.t_s, tl.p99_ms, label="P99", color="tab:red")
    ax.plot(tl.t_s, tl.p50_ms, label="P50", color="tab:blue")
    ax.axhline(result.spec.slo_ms, color="gray", linestyle="--", linewidth=1, label=f"SLO {result.spec.slo_ms:g} ms")
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency (ms)")
    rate = ax.twinx()
    rate.plot(tl.t_s, tl.rps, color="tab:green", alpha=0.4, label="req/s")
    rate.set_ylabel("requests/s")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{result.spec.workload.regime}: {result.spec.cluster.label}, {result.spec.cluster.nodes} nodes")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    for node, (ts, alphas) in alpha_series(result).items():
        ax.step(ts, alphas, where="post", label=f"node {node}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("seconds")
    ax.set_ylabel("alpha (EMB share)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"alpha over time: {result.spec.cluster.label}")
    fig.tight_layout()
    fig.savefig(out / "alpha.png", dpi=110)
    plt.close(fig)

    s, c = result.summary, result.caches
    spec = result.spec
    lines = [
        f"# {spec.workload.regime}: {spec.cluster.label}",
        "",
        f"{spec.cluster.nodes} nodes ({spec.cluster.device}, preset {spec.cluster.preset}, "
        f"pool {spec.cluster.pool_bytes} B each), {spec.workload.duration_s:g} s, base rate "
        f"{spec.workload.base_rate:g} req/s, seed {spec.workload.seed}, SLO {spec.slo_ms:g} ms"
        + (f"; figures from {spec.warmup_s:g} s in (the plots show the whole run)." if spec.warmup_s else "."),
        "",
        "| requests | failures | P50 ms | P99 ms | SLO satisfaction | throughput req/s | EMB hit | KV hit | mean alpha |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s.requests} | {s.failures} | {_f(s.p50_ms, 3)} | {_f(s.p99_ms, 3)} | {_f(s.slo_satisfaction, 4)} | "
        f"{_f(s.throughput_rps, 1)} | {_f(c.emb_hit_rate, 3)} | {_f(c.kv_hit_rate, 3)} | {_f(c.mean_alpha, 3)} |",
        "",
        "![latency](latency.png)",
        "",
        "![alpha](alpha.png)",
        "",
        f"Missed metrics scrapes: {result.failed_scrapes}. Locust exit code: {result.locust_exit_code}.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


# -- several runs ------------------------------------------------------------------------------
# A simulated P99 this far from the measured one (relative) is a disagreement to explain (issue 19).
P99_DISAGREEMENT = 0.2

RUN_COLUMNS = ("regime", "system", "alpha", "policy", "requests", "failures", "p50_ms", "p99_ms",
               "slo_satisfaction", "throughput_rps", "emb_hit", "kv_hit", "mean_alpha")  # fmt: skip


def run_row(r: RunResult) -> dict[str, object]:
    s, c = r.summary, r.caches
    return {
        "regime": r.spec.workload.regime,
        "system": r.spec.cluster.label,
        "alpha": r.spec.cluster.alpha,
        "policy": r.spec.cluster.policy,
        "requests": s.requests,
        "failures": s.failures,
        "p50_ms": s.p50_ms,
        "p99_ms": s.p99_ms,
        "slo_satisfaction": s.slo_satisfaction,
        "throughput_rps": s.throughput_rps,
        "emb_hit": c.emb_hit_rate,
        "kv_hit": c.kv_hit_rate,
        "mean_alpha": c.mean_alpha,
    }


@dataclass(frozen=True)
class Comparison:
    """One regime of `--compare`: the best static run (lowest P99) against the adaptive run."""

    regime: str
    best_static: RunResult
    adaptive: RunResult

    @property
    def p99_reduction(self) -> float:
        """1 - P99(adaptive) / P99(best static): 0.2 means the adaptive P99 is 20% lower."""
        return 1.0 - self.adaptive.summary.p99_ms / self.best_static.summary.p99_ms


def best_static(runs: list[RunResult]) -> RunResult:
    """The static run with the lowest P99 (ties: higher SLO satisfaction), the baseline in hindsight."""
    statics = [r for r in runs if not r.spec.cluster.adaptive]
    if not statics:
        raise ValueError("best_static: no static-alpha run to choose from")
    return min(statics, key=lambda r: (r.summary.p99_ms, -r.summary.slo_satisfaction))


def write_summary(
    out: Path,
    runs: list[RunResult],
    comparisons: list[Comparison],
    command: str,
    predictions: dict[Path, dict[str, float]] | None = None,
) -> str:
    """runs.csv, summary.json and report.md at the top of `out`; returns the comparison table as text.

    `predictions`: the simulator's figures per run folder, put beside the measured ones."""
    predictions = predictions or {}
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        w.writeheader()
        for r in runs:
            w.writerow(run_row(r))

    slo = runs[0].spec.slo_ms
    nodes = runs[0].spec.cluster.nodes
    regimes: dict[str, dict[str, object]] = {}
    for r in runs:
        entry = regimes.setdefault(r.spec.workload.regime, {"policies": {}})
        entry["policies"][r.spec.cluster.label] = {  # type: ignore[index]
            "p50_ms": r.summary.p50_ms,
            "p99_ms": r.summary.p99_ms,
            "slo_satisfaction": r.summary.slo_satisfaction,
            "throughput_rps": r.summary.throughput_rps,
            "emb_hit": r.caches.emb_hit_rate,
            "kv_hit": r.caches.kv_hit_rate,
            "failures": r.summary.failures,
            **({"predicted": predictions[r.out_dir]} if r.out_dir in predictions else {}),
        }
    for comp in comparisons:
        regimes[comp.regime].update(
            p99_reduction_vs_best_static=comp.p99_reduction,
            slo_satisfaction=comp.adaptive.summary.slo_satisfaction,
            best_static_alpha=float(comp.best_static.spec.cluster.alpha),
        )
    (out / "summary.json").write_text(json.dumps({"nodes": nodes, "slo_ms": slo, "regimes": regimes}, indent=2) + "\n")

    lines = ["# helmrec bench", "", f"Command: `{command}`", "", "## Runs", ""]
    lines += ["| " + " | ".join(RUN_COLUMNS) + " |", "|" + "---|" * len(RUN_COLUMNS)]
    for r in runs:
        row = run_row(r)
        cells = [_f(v, 3) if isinstance(v, float) else str(v) for v in row.values()]
        rel = r.out_dir.relative_to(out)
        cells[1] = f"[{cells[1]}]({rel}/report.md)"
        lines.append("| " + " | ".join(cells) + " |")
    table = compare_table(comparisons, slo) if comparisons else ""
    if comparisons:
        lines += ["", "## Best static alpha vs adaptive", "", "```", table, "```"]
    if predictions:
        lines += ["", *prediction_lines(runs, comparisons, predictions)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return table


def compare_table(comparisons: list[Comparison], slo_ms: float) -> str:
    """Side-by-side P99 and SLO satisfaction per regime; the last line is the headline."""
    head = (f"{'regime':<8} {'best static':<26} {'P99 ms':>8} {'SLO':>7}   {'adaptive':<22} "
            f"{'P99 ms':>8} {'SLO':>7}   {'P99 reduction':>13}")  # fmt: skip
    rows = [head, "-" * len(head)]
    for c in comparisons:
        b, a = c.best_static, c.adaptive
        rows.append(
            f"{c.regime:<8} {b.spec.cluster.label:<26} {_f(b.summary.p99_ms):>8} {_f(b.summary.slo_satisfaction, 3):>7}   "
            f"{a.spec.cluster.label:<22} {_f(a.summary.p99_ms):>8} {_f(a.summary.slo_satisfaction, 3):>7}   "
            f"{c.p99_reduction:>12.1%}"
        )
    mean = float(np.mean([c.p99_reduction for c in comparisons]))
    rows.append(f"mean P99 reduction of adaptive vs best static over {len(comparisons)} regimes "
                f"(SLO {slo_ms:g} ms): {mean:.1%}")  # fmt: skip
    return "\n".join(rows)


def prediction_lines(
    runs: list[RunResult], comparisons: list[Comparison], predictions: dict[Path, dict[str, float]]
) -> list[str]:
    """Markdown: measured beside simulated, per run and per comparison; disagreements flagged."""
    lines = [
        "## Measured vs simulated (`helmrec sim` on the same trace and cluster)",
        "",
        "Path ms: the served path's own time from the runs' probes (one client, the smallest request, "
        "pooled over the runs), added to every simulated latency.",
        "",
        "| regime | system | P99 ms measured | P99 ms simulated | simulated / measured | SLO measured "
        "| SLO simulated | KV hit measured | KV hit simulated | EMB hit measured | EMB hit simulated "
        "| mean alpha measured | mean alpha simulated | path ms (probe) |",
        "|" + "---|" * 14,
    ]
    for r in runs:
        sim = predictions.get(r.out_dir)
        if sim is None:
            continue
        ratio = sim["p99_ms"] / r.summary.p99_ms
        flag = " (off by more than 20%)" if abs(ratio - 1.0) > P99_DISAGREEMENT else ""
        lines.append(
            f"| {r.spec.workload.regime} | {r.spec.cluster.label} | {_f(r.summary.p99_ms)} | {_f(sim['p99_ms'])} | "
            f"{_f(ratio)}{flag} | {_f(r.summary.slo_satisfaction, 3)} | {_f(sim['slo_satisfaction'], 3)} | "
            f"{_f(r.caches.kv_hit_rate, 3)} | {_f(sim['kv_hit'], 3)} | {_f(r.caches.emb_hit_rate, 3)} | "
            f"{_f(sim['emb_hit'], 3)} | {_f(r.caches.mean_alpha, 3)} | {_f(sim['mean_alpha'], 3)} | {_f(sim['path_ms'])} |"
        )
    for c in comparisons:
        b, a = predictions.get(c.best_static.out_dir), predictions.get(c.adaptive.out_dir)
        if b is not None and a is not None:
            lines += ["", f"{c.regime}: P99 reduction of adaptive vs the measured best static, measured "
                      f"{c.p99_reduction:.1%}, simulated {1.0 - a['p99_ms'] / b['p99_ms']:.1%}."]  # fmt: skip
    return lines
