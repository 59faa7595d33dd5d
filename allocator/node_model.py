"""The node model: a trace window and an alpha in, hit rates, latency and an Observation out.

One node owns a pool of `pool_bytes`; alpha of it holds EMB rows, the rest
per-user KV prefixes. For every control window of a trace and every alpha on
a 0.01 grid, `build_table` computes once (vectorised over the grid):

- KV (LRU over users, Che's characteristic-time approximation): per-user
  request rates over the last `lookback_s` and users' KV sizes give the
  characteristic time T_c(C) at which the expected resident bytes fill the
  KV capacity C; a request is a KV hit (prefix reuse, full or partial) iff its
  user's previous request is less than T_c ago. A hit prefills only the new
  suffix and looks up only the suffix's embeddings; a miss does all of it.
- EMB (frequency-with-recency eviction, treated as ideal LFU under the
  stationary Zipf item law): the cache holds the C most popular rows, so a row
  lookup hits with probability CDF_zipf(C). Exact for LFU with known
  popularity; it ignores the small warm-up of newly admitted rows.
- Latency: per-request service times from `CostModel`, the window's P99
  service time, plus the P99 queueing delay of an M/G/1 queue at the window's
  arrival rate (Pollaczek-Khinchine mean wait, exponential tail). Work the
  node cannot finish in a window carries over as backlog.

`step_node` then lives one window of a table at a chosen alpha, carrying the
backlog over, and returns what a controller would observe. The oracle
(`oracle.py`) reads alpha* off the same grid, the evaluation (`evaluate.py`)
replays controllers through `step_node`, and the gymnasium wrapper
(`sim_env.NodeEnv`) turns it into PPO's training env: this module knows
nothing of gymnasium, so judging a controller never needs the training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from helmrec.allocator.cost_model import CostModel
from helmrec.allocator.observation import COUNTERFACTUAL_SHARE, KV_LOOKBACK_S, Observation
from helmrec.workload.traces import Trace

ALPHA_GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)
# Utilisation above which the M/G/1 formula is replaced by the backlog model: the stationary
# wait diverges at 1, and a window-long overload is better described by the work left over.
_RHO_CAP = 0.97
# Grid on which Che's occupancy equation is tabulated and inverted (seconds).
_T_GRID = np.geomspace(1e-3, 1e4, 400)


@dataclass(frozen=True)
class NodeConfig:
    """One simulated node and its control loop."""

    pool_bytes: int = 4_000_000_000
    interval_s: float = 1.0  # control window of the simulator (trace seconds)
    warmup_s: float = 120.0  # trace time that only warms the caches before the first window
    # Hit rates and latency of a window are expectations over the requests of the last `lookback_s`
    # (a rate-weighted sample of users, as in Che's approximation), not over the window's own few
    # hundred requests: otherwise alpha* would mostly track which users happened to arrive.
    lookback_s: float = KV_LOOKBACK_S
    # Requests per lookback (at the trace's mean rate) that per-alpha latency is computed over. The
    # sample is every k-th request of the whole trace, so consecutive windows share almost all of it:
    # a fresh sample per window would make alpha* jitter with the sampling, not with the workload.
    sample_requests: int = 6000
    alpha_min: float = 0.02  # alpha the pool never goes below/above (each side keeps some pages)
    alpha_max: float = 0.98
    cost: CostModel = dataclasses.field(default_factory=CostModel)

    def __post_init__(self) -> None:
        if self.sample_requests < 100:
            raise ValueError(f"NodeConfig.sample_requests must be >= 100, got {self.sample_requests}")
        if self.pool_bytes <= 0:
            raise ValueError(f"NodeConfig.pool_bytes must be > 0, got {self.pool_bytes}")
        if self.interval_s <= 0 or self.warmup_s < 0 or self.lookback_s < self.interval_s:
            raise ValueError("NodeConfig needs interval_s > 0, warmup_s >= 0 and lookback_s >= interval_s")
        if not 0.0 <= self.alpha_min < self.alpha_max <= 1.0:
            raise ValueError(f"NodeConfig needs 0 <= alpha_min < alpha_max <= 1, got {self.alpha_min}, {self.alpha_max}")


@dataclass(frozen=True)
class WindowTable:
    """Per-window statistics of one trace, and per (window, alpha on ALPHA_GRID) cache/latency figures."""

    regime: str
    t0_s: np.ndarray  # [W] window start times
    requests: np.ndarray  # [W] requests in the window
    lookback_requests: np.ndarray  # [W] requests in the lookback that ends with the window
    hot_user_share: np.ndarray  # [W] (Observation definition)
    mean_history_len: np.ndarray  # [W]
    in_burst: np.ndarray  # [W] bool: the trace's burst schedule (ground truth, for offline fitting only)
    emb_hit: np.ndarray  # [W, A] row hit rate
    kv_hit: np.ndarray  # [W, A] request hit rate
    mean_service_us: np.ndarray  # [W, A]
    p99_ms: np.ndarray  # [W, A] stationary P99 (service + M/G/1 wait, no carried backlog)
    interval_s: float
    # [W, A] requests waiting at the window's close, when the table comes from a replay whose P99
    # already holds the queue the node built (`helmrec.load.sim.node_table`); None for the analytic
    # table, whose queue `step_node` derives from the utilisation and a carried backlog.
    queue_depth: np.ndarray | None = None

    @property
    def num_windows(self) -> int:
        return int(self.t0_s.shape[0])

    def at(self, w: int, alpha: float) -> tuple[float, float, float, float]:
        """(emb_hit, kv_hit, mean_service_us, p99_ms) of window `w` at `alpha`, linear between grid points."""
        pos = float(np.clip(alpha, 0.0, 1.0)) * (ALPHA_GRID.shape[0] - 1)
        lo = min(int(pos), ALPHA_GRID.shape[0] - 2)
        f = pos - lo
        row = (self.emb_hit[w], self.kv_hit[w], self.mean_service_us[w], self.p99_ms[w])
        return tuple(float(a[lo] * (1.0 - f) + a[lo + 1] * f) for a in row)  # type: ignore[return-value]

    def queue_at(self, w: int, alpha: float) -> float:
        """Replayed queue depth at the close of window `w` at `alpha` (requires `queue_depth`)."""
        assert self.queue_depth is not None, "queue_at needs a replayed table"
        return float(np.interp(np.clip(alpha, 0.0, 1.0), ALPHA_GRID, self.queue_depth[w]))


@dataclass(frozen=True)
class WindowTraffic:
    """What a trace's control windows carry, whatever the node does with it (alpha-free columns)."""

    t0_s: np.ndarray  # [W] window start times
    requests: np.ndarray  # [W]
    lookback_requests: np.ndarray  # [W] requests in the lookback that ends with the window
    hot_user_share: np.ndarray  # [W]
    mean_history_len: np.ndarray  # [W]
    in_burst: np.ndarray  # [W]

    def table(self, regime: str, interval_s: float, **columns: np.ndarray) -> WindowTable:
        """The WindowTable of these windows with the node's per-alpha `columns` (emb_hit, kv_hit, ...)."""
        return WindowTable(
            regime=regime,
            t0_s=self.t0_s,
            requests=self.requests,
            lookback_requests=self.lookback_requests,
            hot_user_share=self.hot_user_share,
            mean_history_len=self.mean_history_len,
            in_burst=self.in_burst,
            interval_s=interval_s,
            **columns,
        )


def window_traffic(trace: Trace, node: NodeConfig) -> WindowTraffic:
    """The alpha-free columns of every control window of `trace` after `node.warmup_s`."""
    starts = np.arange(node.warmup_s, trace.config.duration_s - node.interval_s + 1e-9, node.interval_s)
    requests = np.zeros(starts.shape[0], dtype=np.int64)
    lookback_requests = np.zeros(starts.shape[0], dtype=np.int64)
    hot = np.zeros(starts.shape[0])
    mean_len = np.zeros(starts.shape[0])
    for w, t0 in enumerate(starts):
        rows = trace.window(t0, t0 + node.interval_s)
        requests[w] = rows.stop - rows.start
        t1 = t0 + node.interval_s
        lb = trace.window(t1 - node.lookback_s, t1)
        lookback_requests[w] = lb.stop - lb.start
        if requests[w]:
            hot[w] = float((trace.since_prev_s[rows] <= trace.t_s[rows] - t0).mean())
            mean_len[w] = float(trace.history_len[rows].mean())
    in_burst = trace.config.in_burst(starts + 0.5 * node.interval_s)
    return WindowTraffic(starts, requests, lookback_requests, hot, mean_len, in_burst)


def _p99_wait_ms(rate: float, mean_s_us: np.ndarray, mean_s2_us2: np.ndarray, interval_s: float) -> np.ndarray:
    """P99 queueing delay (ms) of an M/G/1 queue, per alpha; overload beyond _RHO_CAP adds the backlog."""
    lam = rate / 1e6  # per microsecond
    rho = lam * mean_s_us
    rho_c = np.minimum(rho, _RHO_CAP)
    mean_wait = lam * mean_s2_us2 / (2.0 * (1.0 - rho_c))
    # P(W > x) ~ rho exp(-rho x / E[W])  =>  x_99 = E[W]/rho ln(100 rho), zero when rho <= 0.01.
    x99 = np.where(rho_c > 0.01, mean_wait / np.maximum(rho_c, 1e-9) * np.log(np.maximum(100.0 * rho_c, 1.0)), 0.0)
    overload_us = np.maximum(rho - _RHO_CAP, 0.0) * interval_s * 1e6
    return (x99 + overload_us) / 1e3


def _characteristic_time(trace: Trace, lookback: slice, span_s: float, capacity_tokens: np.ndarray) -> np.ndarray:
    """Che's characteristic time T_c per capacity: sum_u size_u (1 - exp(-rate_u T_c)) = capacity.

    Rates are request counts over the lookback / its span; a user's size is its latest history
    length. Users with equal counts share a rate, so the sum runs over distinct counts (tens), not
    users (thousands). Capacity beyond everything the lookback saw gives T_c = inf (all reuse hits).
    """
    users = trace.user_id[lookback]
    if users.size == 0:
        return np.full(capacity_tokens.shape, np.inf)
    _, last_rev, counts = np.unique(users[::-1], return_index=True, return_counts=True)
    sizes = trace.history_len[lookback][::-1][last_rev].astype(np.float64)
    distinct, group = np.unique(counts, return_inverse=True)
    size_by_count = np.bincount(group, weights=sizes)
    rates = distinct / span_s
    occupancy = (1.0 - np.exp(-np.outer(_T_GRID, rates))) @ size_by_count  # [T], increasing in T
    t_char = np.interp(capacity_tokens, occupancy, _T_GRID)
    return np.where(capacity_tokens >= occupancy[-1], np.inf, t_char)


def build_table(trace: Trace, node: NodeConfig = NodeConfig()) -> WindowTable:
    """Simulate every window of `trace` at every alpha of ALPHA_GRID (see the module docstring)."""
    cfg = trace.config
    cost = node.cost
    kv_capacity_tokens = (1.0 - ALPHA_GRID) * node.pool_bytes / cost.kv_token_bytes  # [A]
    emb_rows = np.floor(ALPHA_GRID * node.pool_bytes / cost.emb_row_bytes).astype(np.int64)
    emb_hit_row = np.asarray(trace.items.cdf_at(emb_rows), dtype=np.float64)

    stride = max(1, round(len(trace) / cfg.duration_s * node.lookback_s / node.sample_requests))
    traffic = window_traffic(trace, node)
    shape = (traffic.t0_s.shape[0], ALPHA_GRID.shape[0])
    out = {k: np.zeros(shape) for k in ("emb_hit", "kv_hit", "mean_service_us", "p99_ms")}
    for w, t0 in enumerate(traffic.t0_s):
        t1 = t0 + node.interval_s
        lb = trace.window(t1 - node.lookback_s, t1)
        t_char = _characteristic_time(trace, lb, min(node.lookback_s, t1), kv_capacity_tokens)
        sample = np.arange(-(-lb.start // stride) * stride, lb.stop, stride)
        out["emb_hit"][w] = emb_hit_row
        if sample.size:
            # Che: a request hits iff its user came back within the characteristic time.
            hit = trace.since_prev_s[sample][None, :] <= t_char[:, None]  # [A, s]
            hist = trace.history_len[sample].astype(np.float64)
            computed = np.where(hit, hist - trace.prev_len[sample], hist)
            lookups = computed + cfg.candidates
            miss_rows = lookups * (1.0 - emb_hit_row[:, None])
            service = cost.service_us(computed, hist, cfg.candidates, miss_rows, lookups - miss_rows)
            rate = (lb.stop - lb.start) / min(node.lookback_s, t1)
            mean_s = service.mean(axis=1)
            p99_service_ms = np.percentile(service, 99, axis=1) / 1e3
            out["kv_hit"][w] = hit.mean(axis=1)
            out["mean_service_us"][w] = mean_s
            out["p99_ms"][w] = p99_service_ms + _p99_wait_ms(rate, mean_s, (service**2).mean(axis=1), node.interval_s)
    return traffic.table(cfg.regime, node.interval_s, **out)


@dataclass
class NodeState:
    """What carries over between windows of one node: the alpha in force and unfinished work.

    With `rng`, the KV hit rates the node observes are counted, not expected: the lookback's
    requests fall into (hit even with less KV, hit, hit only with more KV, miss) by one multinomial
    draw at the table's probabilities, as a node counting its requests sees them.
    """

    alpha: float
    backlog_us: float = 0.0
    rng: np.random.Generator | None = None


def step_node(table: WindowTable, w: int, state: NodeState) -> Observation:
    """Run window `w` at `state.alpha`: update the backlog, return what the controller observes.

    The counterfactual KV hit rates are the table's at alpha -/+ COUNTERFACTUAL_SHARE: the same
    Che approximation that gives `kv_hit_rate`, at the neighbouring KV capacities, which is what
    the node's ghost accounting measures (alpha clipped to [0, 1], where the pool ends).
    """
    emb_hit, kv_hit, mean_s_us, p99_ms = table.at(w, state.alpha)
    kv_more = table.at(w, state.alpha - COUNTERFACTUAL_SHARE)[1]
    kv_less = table.at(w, state.alpha + COUNTERFACTUAL_SHARE)[1]
    if state.rng is not None:
        kv_hit, kv_more, kv_less = _counted(state.rng, int(table.lookback_requests[w]), kv_hit, kv_more, kv_less)
    rate = float(table.requests[w]) / table.interval_s
    if table.queue_depth is not None:
        # A replayed table's P99 and queue already hold what the node's own FIFO built.
        queue = table.queue_at(w, state.alpha)
    else:
        work_us = rate * table.interval_s * mean_s_us
        state.backlog_us = max(0.0, state.backlog_us + work_us - table.interval_s * 1e6)
        # Requests still waiting at the window's close: the carried backlog plus the M/G/1 mean queue.
        rho = min(rate * mean_s_us / 1e6, _RHO_CAP)
        queue = state.backlog_us / max(mean_s_us, 1e-9) + rho * rho / (2.0 * (1.0 - rho))
    return Observation(
        emb_hit_rate=min(max(emb_hit, 0.0), 1.0),
        kv_hit_rate=min(max(kv_hit, 0.0), 1.0),
        hot_user_share=float(table.hot_user_share[w]),
        mean_history_len=float(table.mean_history_len[w]),
        request_rate=rate,
        queue_depth=float(queue),
        alpha=float(state.alpha),
        p99_ms=float(p99_ms + state.backlog_us / 1e3),
        kv_hit_rate_more=min(max(kv_more, 0.0), 1.0),
        kv_hit_rate_less=min(max(kv_less, 0.0), 1.0),
    )


def _counted(rng: np.random.Generator, n: int, hit: float, more: float, less: float) -> tuple[float, float, float]:
    """(hit, more, less) rates of `n` requests drawn at these probabilities (nested: less <= hit <= more)."""
    if n <= 0:
        return hit, more, less
    less, hit, more = (min(max(p, 0.0), 1.0) for p in (less, hit, more))
    hit, more = max(hit, less), max(more, hit, less)
    counts = rng.multinomial(n, [less, hit - less, more - hit, 1.0 - more])
    return (counts[0] + counts[1]) / n, (counts[0] + counts[1] + counts[2]) / n, counts[0] / n
