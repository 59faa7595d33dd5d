"""`hstu_pool`: the single owner of the node's HBM pool.

One instance per GPU; it is the one step of `hstu_ensemble`. It validates each
public request against `schema` (an error names the tensor and the rule) and
answers it with SCORES [num_candidates, num_tasks]. Validation lives here, not
in a separate CPU model: it costs ~30 us for a 4096-event history, while every
extra Python-backend hop costs ~0.5-0.7 ms on the H100 host (docs/gpu.md (b)).

Every parameter is read from config.pbtxt, with no default here: a missing one
stops the model from loading with an error naming it, so the file stays the one
source of the node's settings.

`network: "inprocess"` runs the PyTorch network in this process
through the pool: KV prefix reuse, EMB cache, no cross-process copy of the KV.
`network: "bls"` calls the `hstu` model by BLS instead — the deployment where
`hstu` is a TensorRT engine served by Triton's TensorRT backend; that path is
uncached, since the engine takes whole histories.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from helmrec import schema
from helmrec.allocator.interface import Decider
from helmrec.pool.config import PoolConfig
from helmrec.pool.metrics import PoolMetrics
from helmrec.pool.ranker import PooledRanker
from helmrec.serving.device_memory import PARAMETER as MEMORY_CAP
from helmrec.serving.device_memory import apply_cap, out_of_memory_message, parse_device_memory_bytes, total_memory
from helmrec.serving.network import load_network, read_limits, resolve_device, serving_dtype
from helmrec.serving.node_control import NodeControl, ServiceTimes
from helmrec.serving.triton_io import ModelArgs, error_response, input_arrays, output_tensor, to_torch

NETWORK_MODES = ("inprocess", "bls")
CONTROLLERS = ("static", "adaptive")


def _controller(kind: str) -> Decider | None:
    """The alpha controller the config asks for; `static` keeps the configured alpha."""
    if kind not in CONTROLLERS:
        raise pb_utils.TritonModelException(f"hstu_pool: parameter 'controller' must be one of {CONTROLLERS}, got {kind!r}")
    if kind == "static":
        return None
    from helmrec.allocator.controller import Controller  # noqa: PLC0415 - only nodes that adapt load it

    return Controller.load()


def _unbatched(arrays: dict[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    """A request's inputs without the batch dimension: with `max_batch_size > 0` and ragged
    batching, Triton delivers every request on its own as `[1, n]`."""
    return {name: None if a is None else a[0] for name, a in arrays.items()}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """`warmup_shapes` ("2048x256,14000x2048": history length x candidates) as pairs."""
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            n, c = (int(v) for v in item.split("x"))
        except ValueError:
            raise pb_utils.TritonModelException(
                f"hstu_pool: parameter 'warmup_shapes' takes HISTORYxCANDIDATES pairs separated by commas, got {item!r}"
            ) from None
        if n < 1 or c < 1:
            raise pb_utils.TritonModelException(f"hstu_pool: parameter 'warmup_shapes': {item!r} needs lengths >= 1")
        shapes.append((n, c))
    return shapes


def _device_memory_cap(raw: str, pool_bytes: int, device: torch.device) -> int:
    """`device_memory_bytes` parsed and, on a GPU, put in force; the cap in force (0: none).

    Called before the pool and the network are allocated: the cap bounds the allocator from then on."""
    try:
        cap = parse_device_memory_bytes(raw, pool_bytes, total_memory(device))
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"hstu_pool: {exc}") from None
    if cap and device.type != "cuda":
        pb_utils.Logger.log_info(f"hstu_pool: parameter '{MEMORY_CAP}' ({cap}) is ignored on {device}: it caps a GPU's memory")
        return 0
    if cap:
        apply_cap(cap, device)
    return cap


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.mode = model.parameter("network")
        if self.mode not in NETWORK_MODES:
            raise pb_utils.TritonModelException(
                f"hstu_pool: parameter 'network' must be one of {NETWORK_MODES}, got {self.mode!r}"
            )
        self.limits = read_limits(model.path_parameter("weights"))
        if self.mode == "bls":
            return
        device = resolve_device(model.parameter("device"), model.instance_kind, model.device_id)
        dtype = serving_dtype(model.parameter("dtype"), device)
        pool_config = PoolConfig.from_triton_parameters(model.parameters(), device=str(device))
        self.memory_cap = _device_memory_cap(model.parameter(MEMORY_CAP), pool_config.pool_bytes, device)
        network = load_network(model.path_parameter("weights"), device, dtype)
        self.ranker = PooledRanker(
            network,
            pool_config,
            background_interval_s=float(model.parameter("background_interval_ms")) / 1e3,
            graph_max_batch=int(model.parameter("graph_max_batch")),
        )
        shapes = parse_shapes(model.parameter("warmup_shapes"))
        seconds = self.ranker.warm(shapes)
        if shapes:
            # Reserved = the pool + weights + every captured graph's private memory + the allocator's cache:
            # what one more server on this GPU has to fit beside.
            reserved = torch.cuda.memory_reserved(device) if device.type == "cuda" else 0
            cap = f" of a {self.memory_cap / 2**30:.1f} GiB cap ({MEMORY_CAP})" if self.memory_cap else ""
            pb_utils.Logger.log_info(
                f"hstu_pool: captured the graphs of {len(shapes)} warm-up shape(s) in {seconds:.1f} s; "
                f"graph buffers hold {self.ranker.graph_buffer_bytes / 2**20:.0f} MiB; "
                f"device memory reserved {reserved / 2**30:.1f} GiB{cap}"
            )
        self.service_times = ServiceTimes()
        metrics = PoolMetrics(pb_utils.MetricFamily)
        self.control = NodeControl(
            read_stats=self.ranker.stats,
            set_alpha=self.ranker.set_alpha,
            publish=metrics.update,
            service_times=self.service_times,
            controller=_controller(model.parameter("controller")),
            interval_s=float(model.parameter("control_interval_ms")) / 1e3,
        )
        self.control.start()

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order. Triton's dynamic batcher hands over every request
        waiting in the queue (each `[1, n]`, `allow_ragged_batch`); a bad one gets its own
        INVALID_ARG and the rest are ranked together as one group."""
        out: list[Any] = [None] * len(requests)
        valid: list[tuple[int, schema.ValidRequest]] = []
        for i, request in enumerate(requests):
            try:
                valid.append((i, schema.validate(_unbatched(input_arrays(request, schema.PUBLIC_INPUTS)), self.limits)))
            except schema.RequestError as exc:
                out[i] = error_response(str(exc))
        if self.mode == "bls":
            for i, req in valid:
                out[i] = self._bls(req)
        elif valid:
            for (i, _), response in zip(valid, self._rank([req for _, req in valid])):
                out[i] = response
        return out

    def _rank(self, reqs: list[schema.ValidRequest]) -> list[Any]:
        """Valid requests through the pool as one group; a failure of the node's own machinery fails loudly.

        Running out of device memory (the `device_memory_bytes` cap, or a full GPU) fails the
        group, not the node: the allocator's cache is emptied and the next group is served.
        INTERNAL, not UNAVAILABLE: a router takes UNAVAILABLE for a dead backend."""
        for failed in (self.control.error, self.ranker.background_error):
            if failed is not None:
                error = error_response(f"hstu_pool: node control stopped: {failed!r}", pb_utils.TritonError.INTERNAL)
                return [error] * len(reqs)
        t0 = time.perf_counter()
        try:
            results = self.ranker.rank_many(reqs)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return [error_response(out_of_memory_message(self.memory_cap), pb_utils.TritonError.INTERNAL)] * len(reqs)
        group_ms = (time.perf_counter() - t0) * 1e3
        for _ in reqs:  # each request of the group waited for all of it
            self.service_times.record(group_ms)
        return [
            error_response(f"hstu_pool: {r}")  # a rule of the pool's own that schema does not state
            if isinstance(r, ValueError)
            else pb_utils.InferenceResponse(output_tensors=[output_tensor(schema.SCORES, r.unsqueeze(0))])
            for r in results
        ]

    def _bls(self, req: schema.ValidRequest) -> Any:
        """Forward the valid request to the `hstu` model and relay its answer or error."""
        arrays = {
            schema.HISTORY_ITEM_IDS: req.hist_ids,
            schema.HISTORY_TIMESTAMPS: req.hist_ts,
            schema.HISTORY_ACTIONS: req.hist_actions,
            schema.CANDIDATE_ITEM_IDS: req.cand_ids,
            schema.QUERY_TIMESTAMP: np.array([req.query_ts], dtype=np.int64),
        }
        inputs = [output_tensor(name, torch.from_numpy(value)) for name, value in arrays.items()]
        response = pb_utils.InferenceRequest(
            model_name=schema.NETWORK_MODEL,
            requested_output_names=[schema.SCORES],
            inputs=inputs,
        ).exec()
        if response.has_error():
            return error_response(f"{schema.NETWORK_MODEL}: {response.error().message()}", pb_utils.TritonError.INTERNAL)
        scores = pb_utils.get_output_tensor_by_name(response, schema.SCORES)
        return pb_utils.InferenceResponse(output_tensors=[output_tensor(schema.SCORES, to_torch(scores))])

    def finalize(self) -> None:
        if self.mode == "inprocess":
            self.control.stop()
            self.ranker.close()
