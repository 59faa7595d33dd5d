"""The cached request path: what `hstu_pool` calls once per request.

`PooledRanker.rank` = KV prefix lookup -> EMB lookup of the uncovered history
suffix and the candidates -> incremental prefill of the suffix only -> rank ->
store the new KV and queue the missed rows for admission. Scores equal the
uncached `HSTU.forward` on the same request (within fp tolerance): a cached
row is a byte copy of the host row, and a cached prefix's K/V is exactly the
prefix of the whole history's K/V (see python_backend/hstu/model.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from helmrec.hstu.model import HSTU
from helmrec.kernels.attention import triton_importable
from helmrec.fastpath.fused_model import FusedHSTU
from helmrec.fastpath.graphed_extend import GraphedExtend
from helmrec.fastpath.graphed_prefill import GraphedPrefill
from helmrec.fastpath.graphed_rank import GraphedRank
from helmrec.pool.background import BackgroundWorker, RefillThrottle
from helmrec.pool.config import PoolConfig
from helmrec.pool.host_table import HostTable
from helmrec.pool.kv_cache import HistoryTokens
from helmrec.pool.pool import Pool, PoolLookup
from helmrec.pool.stats import PoolStats

# How often the background thread wakes: short enough that a new alpha starts
# moving within milliseconds, long enough to cost nothing when idle.
DEFAULT_BACKGROUND_INTERVAL_S = 0.002


@dataclass(frozen=True)
class RankRequest:
    """One ranking request: a user's history (oldest first) and the candidates to score."""

    user_id: int
    hist_ids: torch.Tensor
    hist_ts: torch.Tensor
    hist_actions: torch.Tensor
    cand_ids: torch.Tensor
    query_ts: int

    def __post_init__(self) -> None:
        if isinstance(self.user_id, bool) or not isinstance(self.user_id, int):
            raise ValueError(f"user_id must be an int, got {type(self.user_id).__name__}")
        if isinstance(self.query_ts, bool) or not isinstance(self.query_ts, int):
            raise ValueError(f"query_ts must be an int, got {type(self.query_ts).__name__}")
        for name in ("hist_ids", "hist_ts", "hist_actions", "cand_ids"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.int64:
                shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                dtype = value.dtype if isinstance(value, torch.Tensor) else ""
                raise ValueError(f"{name} must be a 1-D int64 tensor, got {dtype} {shape}")
        n = self.hist_ids.numel()
        for name in ("hist_ts", "hist_actions"):
            if getattr(self, name).numel() != n:
                raise ValueError(f"{name} has {getattr(self, name).numel()} entries, hist_ids has {n}: they must match")
        if self.cand_ids.numel() == 0:
            raise ValueError("cand_ids must hold at least one candidate")


@dataclass(frozen=True)
class GraphedSteps:
    """The request path's steps replayed from CUDA graphs."""

    prefill: GraphedPrefill
    extend: GraphedExtend
    rank: GraphedRank


def graphed_steps(model: HSTU, capture_lock: threading.Lock) -> GraphedSteps | None:
    """Prefill, extend and rank replayed from CUDA graphs, where they apply: on a GPU (eager,
    each is launch-bound: for `large` at 4k history the rank step is ~4 ms vs ~0.5 ms
    replayed) with the bias-free production variant (the fused kernels do not take the
    research variant's relative bias) and the `triton` package present. Graphs are captured
    under `capture_lock`, which the background thread holds around its rounds."""
    on_gpu = model.item_emb.weight.device.type == "cuda"
    if not on_gpu or model.config.variant != "production" or not triton_importable():
        return None
    fused = FusedHSTU(model)
    return GraphedSteps(
        GraphedPrefill(fused, capture_lock=capture_lock),
        GraphedExtend(fused, capture_lock=capture_lock),
        GraphedRank(fused, capture_lock=capture_lock),
    )


class PooledRanker:
    """HSTU ranking through the shared pool; owns the pool and its background thread."""

    def __init__(
        self, model: HSTU, config: PoolConfig, *, background_interval_s: float | None = DEFAULT_BACKGROUND_INTERVAL_S
    ) -> None:
        """`background_interval_s=None` runs no thread; the caller then drives `step_background`
        (benchmarks and tests that need a reproducible order of events)."""
        device = torch.device(config.device)
        weight = model.item_emb.weight
        param_device = next(p for name, p in model.named_parameters() if not name.startswith("item_emb")).device
        if param_device.type != device.type:
            raise ValueError(f"model lives on {param_device}, pool config asks for device {config.device!r}")
        self.model = model
        self._device = device
        # Held by a background round and by a CUDA-graph capture: never both at once.
        self._cuda_lock = threading.Lock()
        self._graphs = graphed_steps(model, self._cuda_lock)
        self.pool = Pool(config, HostTable(weight, device), model.config.num_layers, model.kv_width, weight.dtype)
        self._throttle = RefillThrottle(config.refill_bandwidth_bytes_per_s, self.pool.host_table.row_bytes)
        self._worker = (
            BackgroundWorker(self._background_round, background_interval_s) if background_interval_s is not None else None
        )

    # -- the controller's side ---------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The split in effect now (EMB pages / all pages); trails the last `set_alpha` while moving."""
        return self.pool.alpha

    @property
    def target_alpha(self) -> float:
        return self.pool.target_alpha

    def set_alpha(self, alpha: float) -> None:
        self.pool.set_alpha(alpha)

    def stats(self) -> PoolStats:
        """Read-and-reset snapshot of the window since the previous call."""
        return self.pool.stats()

    # -- the request path ---------------------------------------------------------------------------
    def rank(self, req: RankRequest) -> torch.Tensor:
        """Scores [c, num_tasks] float32 on CPU for one request."""
        self._validate(req)
        tokens = HistoryTokens(req.hist_ids, req.hist_ts, req.hist_actions)
        dev = self._device
        with torch.inference_mode():
            found = self.pool.lookup(req.user_id, tokens, req.hist_ids, req.cand_ids)
            hist_ts = req.hist_ts.to(dev)
            n, reused = tokens.length, found.prefix_len
            graphs = self._graphs
            if reused == n and found.prefix_kv is not None:
                kv = found.prefix_kv  # full hit: nothing to compute for the history
            else:
                kv = self._history_kv(found, hist_ts, req.hist_actions[reused:].to(dev))
            if graphs is not None:
                scores = graphs.rank.rank(kv, req.hist_ts, found.cand_emb, req.query_ts)
            else:
                scores = self.model.rank(kv, hist_ts, found.cand_emb, req.query_ts)
            self.pool.commit(req.user_id, tokens, found, kv)
        return scores.float().cpu()

    def _history_kv(self, found: PoolLookup, hist_ts: torch.Tensor, new_actions: torch.Tensor) -> torch.Tensor:
        """K/V of the whole history from the reused prefix (if any) plus the computed suffix:
        from CUDA graphs where they apply, eagerly otherwise."""
        graphs, reused, new = self._graphs, found.prefix_len, found.suffix_emb.shape[0]
        if reused > 0:
            if graphs is not None and graphs.extend.applies(reused, new):
                suffix = graphs.extend.extend_suffix(found.prefix_kv, found.suffix_emb, hist_ts, new_actions)
                return torch.cat([found.prefix_kv, suffix], dim=1)
            return self.model.extend(found.prefix_kv, found.suffix_emb, hist_ts, new_actions)
        if graphs is not None and new > 0:
            return graphs.prefill.prefill(found.suffix_emb, hist_ts, new_actions)
        return self.model.prefill(found.suffix_emb, hist_ts, new_actions)

    # -- background -----------------------------------------------------------------------------------
    def step_background(self, elapsed_s: float) -> None:
        """One round of background work as if `elapsed_s` passed: a bounded move step, then
        admission and refill within the bandwidth the throttle grants for that time.

        Only for a ranker built with `background_interval_s=None`; with a thread, the
        thread is the one caller (the throttle is not shared between threads)."""
        if self._worker is not None:
            raise RuntimeError("step_background: this ranker's background thread already does this work")
        self._background_round(elapsed_s)

    def _background_round(self, elapsed_s: float) -> None:
        with self._cuda_lock:
            self.pool.step_moves()
            budget = self._throttle.grant(elapsed_s)
            self._throttle.spend(self.pool.background_step(budget))

    @property
    def background_error(self) -> BaseException | None:
        """The exception that stopped the background thread, if one did."""
        return self._worker.error if self._worker is not None else None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> "PooledRanker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _validate(self, req: RankRequest) -> None:
        cfg = self.model.config
        n, c = req.hist_ids.numel(), req.cand_ids.numel()
        if n > cfg.max_seq_len:
            raise ValueError(f"hist_ids: history length {n} exceeds max_seq_len {cfg.max_seq_len}")
        if c > cfg.max_candidates:
            raise ValueError(f"cand_ids: {c} candidates exceed max_candidates {cfg.max_candidates}")
        for name, ids, upper in (
            ("hist_ids", req.hist_ids, cfg.num_items),
            ("cand_ids", req.cand_ids, cfg.num_items),
            ("hist_actions", req.hist_actions, cfg.num_actions),
        ):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
                raise ValueError(f"{name}: ids must lie in [0, {upper}), got [{int(ids.min())}, {int(ids.max())}]")
