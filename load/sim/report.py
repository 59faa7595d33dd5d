"""The Markdown report of a grid run (docs/sim.md) and its plots, next to the paper's figures.

Everything here is rendered from the report dict; the only hand-written part
is a `## Discussion` section, which is carried over from the existing file so
re-running the grid refreshes the numbers without erasing the analysis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helmrec.load.sim.grid import TaskResult

# HELM (arXiv 2605.04450), 32-node A100 cluster: ranges over its three workloads.
PAPER = {
    "p99_reduction_vs_best_static": (0.24, 0.38),
    "slo_satisfaction": (0.935, 0.996),
    "alpha_gap": (0.024, 0.029),
}
DISCUSSION = "## Discussion"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _gap(x: float | None) -> str:
    """An alpha gap, or '-' where the run did not pay for alpha* (only the headline run does)."""
    return "-" if x is None else f"{x:.4f}"


def headline_table(report: dict) -> list[str]:
    """Ours per regime next to the paper's range, with a verdict per figure."""
    lines = [
        "| regime | P99 vs best static (ours) | paper | SLO satisfaction (ours) | paper "
        "| mean abs(alpha - alpha*) (ours) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    lo_red, hi_red = PAPER["p99_reduction_vs_best_static"]
    lo_slo, hi_slo = PAPER["slo_satisfaction"]
    lo_gap, hi_gap = PAPER["alpha_gap"]
    for regime, r in report["regimes"].items():
        red, slo, gap = r["p99_reduction_vs_best_static"], r["slo_satisfaction"], r["alpha_gap"]
        lines.append(
            f"| {regime} | {-100 * red:+.1f}% "
            f"({'beats' if red > hi_red else 'within' if red >= lo_red else 'worse than best static' if red < 0 else 'short of'})"
            f" | -{100 * lo_red:.0f}...-{100 * hi_red:.0f}% "
            f"| {_pct(slo)} ({'beats' if slo > hi_slo else 'within' if slo >= lo_slo else 'short of'}) "
            f"| {_pct(lo_slo)}-{_pct(hi_slo)} "
            f"| {gap:.4f} ({'beats' if gap < lo_gap else 'within' if gap <= hi_gap else 'short of'}) "
            f"| {lo_gap}-{hi_gap} |"
        )
    return lines


def policy_table(regime: str, r: dict) -> list[str]:
    lines = [
        f"**{regime}** ({r['requests']:,} requests; best static: `{r['best_static']['policy']}` at "
        f"alpha {r['best_static']['alpha']:g})",
        "",
        "| policy | alpha | P50 ms | P99 ms | SLO | throughput req/s | EMB hit | KV hit | refused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["policies"].items():
        alpha = f"{r['static_alpha'][name[len('static_'):]]:g}" if name.startswith("static_") else "adaptive"
        lines.append(
            f"| {name} | {alpha} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {_pct(p['slo_satisfaction'])} "
            f"| {p['throughput_rps']:,.0f} | {p['emb_hit']:.3f} | {p['kv_hit']:.3f} | {_pct(r['refused'][name])} |"
        )
    return lines


def ablation_table(report: dict) -> list[str]:
    lines = [
        "| regime | routing (full controller) | EMB hit | KV hit | P99 ms | SLO | alpha gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for regime, r in report["regimes"].items():
        for router, a in r["routing_ablation"].items():
            lines.append(
                f"| {regime} | {router} | {a['emb_hit']:.3f} | {a['kv_hit']:.3f} | {a['p99_ms']:.2f} "
                f"| {_pct(a['slo_satisfaction'])} | {_gap(a['alpha_gap'])} |"
            )
    return lines


def sweep_table(report: dict) -> list[str]:
    alphas = list(next(iter(report["regimes"].values()))["sweep_p99_ms"]["helm"])
    lines = ["| regime | router | " + " | ".join(f"alpha {a}" for a in alphas) + " |",
             "|---|---|" + "---|" * len(alphas)]
    for regime, r in report["regimes"].items():
        for router, row in r["sweep_p99_ms"].items():
            lines.append(f"| {regime} | {router} | " + " | ".join(f"{row[a]:.2f}" for a in alphas) + " |")
    return lines


def plot(series: dict[str, dict[str, TaskResult]], path: Path) -> None:
    """Per regime: mean alpha vs mean alpha* over nodes (top), cluster P99 per window (bottom)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(series), figsize=(4.2 * len(series), 5.6), squeeze=False)
    for col, (regime, runs) in enumerate(series.items()):
        top, bottom = axes[0, col], axes[1, col]
        full, ppo, static = runs["full"], runs["ppo"], runs["best_static"]
        n = min(len(full.t_s), len(full.alpha_star))
        top.plot(full.t_s[:n], full.alpha_star[:n], color="black", lw=1.2, label="alpha* (oracle, node mean)")
        top.plot(full.t_s, full.alpha, color="tab:blue", lw=1.2, label="full")
        top.plot(ppo.t_s, ppo.alpha, color="tab:orange", lw=1.0, ls="--", label="ppo")
        top.axhline(static.alpha[0], color="tab:gray", lw=1.0, ls=":", label=f"best static ({static.task.router})")
        top.set_ylim(0, 1)
        top.set_title(regime)
        top.set_ylabel("alpha")
        bottom.plot(full.t_s, full.p99_ms, color="tab:blue", label="full + helm")
        bottom.plot(static.t_s, static.p99_ms, color="tab:gray", label=f"best static ({static.task.router})")
        bottom.set_yscale("log")
        bottom.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        bottom.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        bottom.set_ylabel("P99 per window (ms)")
        bottom.set_xlabel("simulated time (s)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[1, 0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hits(report: dict, path: Path) -> None:
    """KV and EMB hit rate per routing policy (full controller), per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(report["regimes"])
    routers = list(next(iter(report["regimes"].values()))["routing_ablation"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    width = 0.8 / len(routers)
    x = np.arange(len(regimes))
    for ax, key in zip(axes, ("kv_hit", "emb_hit")):
        for k, router in enumerate(routers):
            ax.bar(x + k * width, [report["regimes"][r]["routing_ablation"][router][key] for r in regimes], width, label=router)
        ax.set_xticks(x + width * (len(routers) - 1) / 2, regimes)
        ax.set_ylim(0, 1)
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(report: dict, command: str, alpha_png: str, hits_png: str, discussion: str) -> str:
    """The whole docs/sim.md."""
    cfg = report["config"]
    per_node = cfg["trace_per_node"]
    out = [
        f"# The cluster simulator: the paper's table on a simulated {report['nodes']}-node cluster",
        "",
        f"Produced by `{command}` in {report['run_time_s']:.0f} s "
        f"({cfg['workers']} worker processes). JSON: the `helmrec sim` shape of docs/reports.md.",
        "",
        "## What is simulated",
        "",
        f"- {report['nodes']} nodes, each a pool of {cfg['pool_bytes'] / 2**30:.1f} GiB in "
        f"{cfg['page_bytes'] // 1024} KiB pages shared by the EMB and KV caches (`load/sim/node.py`: the real "
        "pool's KV policy replayed per request over user ids, its LFU EMB policy as the resident top-popularity "
        f"rows with a {cfg['refill_bytes_per_s'] / 1e9:.2f} GB/s refill cap), a FIFO server that groups "
        "waiting requests, whose service times and grouping factors come from the cost table "
        f"({cfg['cost_source']}).",
        f"- Traces: the `{cfg['workload']}` workload (docs/workload.md) of `helmrec.workload.traces`, "
        f"Steady/Trend/Burst scaled by the node count (per node: {per_node['arrival_rate']:,.1f} req/s, "
        f"{per_node['users']:,.0f} users of which {per_node['hot_users']:,.0f} hot, {per_node['items']:,.0f} items, "
        f"histories of {per_node['mean_history_len']:,.0f} events on average up to {per_node['max_history_len']:,}, "
        f"{per_node['candidates']:,} candidates), {cfg['duration_s']:.0f} s of which the first "
        f"{cfg['warmup_s']:.0f} s warm the caches and controllers and are not measured; Burst has a "
        f"{cfg['burst_len_s']:.0f} s burst every {cfg['burst_every_s']:.0f} s (first at {cfg['burst_start_s']:.0f} s).",
        "- Routing: `router/policies.py` objects and `router/state.py` backend states, unchanged; every "
        f"control interval ({cfg['interval_s']:g} s) the simulated router scrapes what a backend's metrics "
        f"port says (alpha, pending requests, KV cached users and evictions); at {cfg['max_in_flight']} "
        "requests in flight on every backend it refuses (RESOURCE_EXHAUSTED), counted as an SLO miss.",
        "- Control: each node runs its own `helmrec.allocator.controller.Controller` (the packaged `policy.npz`) on "
        "the window's `Observation`; `static_*` hold the best alpha of a sweep "
        f"({', '.join(f'{a:g}' for a in cfg['sweep_alphas'])}, on a {cfg['sweep_nodes']}-node slice at the same "
        "per-node load), found per router.",
        f"- SLO: a request within {cfg['slo_ms']:g} ms (see `load/sim/config.py` for why). alpha* per node "
        "and window: the replay's own optimum, `helmrec.allocator.oracle.alpha_star` on the traffic the router "
        "sent to that node replayed through the same node at every alpha of a sweep (`load/sim/node_table.py`).",
        "",
        "## Against the paper",
        "",
        *headline_table(report),
        "",
        "Ours: the full controller (PPO + residual + burst recovery) with `helm` routing against the best "
        "static alpha under the best router of the sweep (a positive P99 change means the full system is "
        "slower); paper: HELM's reported ranges over its workloads.",
        "",
        f"![alpha and P99 over time]({alpha_png})",
        "",
        "## Every policy",
        "",
    ]
    for regime, r in report["regimes"].items():
        out += policy_table(regime, r) + [""]
    out += [
        "## Routing ablation (the full controller behind each router)",
        "",
        *ablation_table(report),
        "",
        f"![hit rates by router]({hits_png})",
        "",
        "## Static sweep (P99 ms)",
        "",
        *sweep_table(report),
        "",
    ]
    out.append(discussion.rstrip() + "\n" if discussion else f"{DISCUSSION}\n\n(none yet)\n")
    return "\n".join(out)


def existing_discussion(path: Path) -> str:
    """The `## Discussion` section of an existing report (to carry over), or ''."""
    if not path.exists():
        return ""
    text = path.read_text()
    at = text.find(f"\n{DISCUSSION}\n")
    return text[at + 1 :] if at >= 0 else ""
