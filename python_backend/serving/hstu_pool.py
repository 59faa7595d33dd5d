"""`hstu_pool`: the single owner of the node's HBM pool.

One instance per GPU; it is the one step of `hstu_ensemble`. It validates each
public request against `schema` (an error names the tensor and the rule) and
answers it with SCORES [num_candidates, num_tasks]. Validation lives here, not
in a separate CPU model: it costs ~30 us for a 4096-event history, while every
extra Python-backend hop costs ~0.5-0.7 ms on the H100 host (docs/gpu.md (b)).

`network: "inprocess"` (default) runs the PyTorch network in this process
through the pool: KV prefix reuse, EMB cache, no cross-process copy of the KV.
`network: "bls"` calls the `hstu` model by BLS instead — the deployment where
`hstu` is a TensorRT engine served by Triton's TensorRT backend; that path is
uncached, since the engine takes whole histories.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from helmrec.allocator.interface import Decider
from helmrec.pool.config import PoolConfig
from helmrec.pool.metrics import PoolMetrics
from helmrec.pool.ranker import PooledRanker, RankRequest
from helmrec import schema
from helmrec.serving.network import load_network, read_limits, resolve_device, serving_dtype
from helmrec.serving.node_control import NodeControl, ServiceTimes
from helmrec.serving.triton_io import ModelArgs, error_response, input_tensor, output_tensor, to_torch

NETWORK_MODEL = "hstu"
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


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.mode = model.parameter("network", "inprocess")
        if self.mode not in NETWORK_MODES:
            raise pb_utils.TritonModelException(f"hstu_pool: parameter 'network' must be one of {NETWORK_MODES}, got {self.mode!r}")
        self.limits = read_limits(model.path_parameter("weights"))
        if self.mode == "bls":
            return
        device = resolve_device(model.parameter("device", "auto"), model.instance_kind, model.device_id)
        dtype = serving_dtype(model.parameter("dtype", "auto"), device)
        network = load_network(model.path_parameter("weights"), device, dtype)
        self.ranker = PooledRanker(
            network,
            PoolConfig.from_triton_parameters(model.parameters(), device=str(device)),
            background_interval_s=float(model.parameter("background_interval_ms", "2")) / 1e3,
        )
        self.service_times = ServiceTimes()
        metrics = PoolMetrics(pb_utils.MetricFamily)
        self.control = NodeControl(
            read_stats=self.ranker.stats,
            set_alpha=self.ranker.set_alpha,
            publish=metrics.update,
            service_times=self.service_times,
            controller=_controller(model.parameter("controller", "static")),
            interval_s=float(model.parameter("control_interval_ms", "1000")) / 1e3,
        )
        self.control.start()

    def execute(self, requests: list[Any]) -> list[Any]:
        rank = self._bls if self.mode == "bls" else self._rank
        out = []
        for request in requests:
            try:
                req = schema.validate({name: input_tensor(request, name) for name in schema.PUBLIC_INPUTS}, self.limits)
            except schema.RequestError as exc:
                out.append(error_response(str(exc)))
                continue
            out.append(rank(req))
        return out

    def _rank(self, req: RankRequest) -> Any:
        """One valid request through the pool; a failure of the node's own machinery fails loudly."""
        for failed in (self.control.error, self.ranker.background_error):
            if failed is not None:
                return error_response(f"hstu_pool: node control stopped: {failed!r}", pb_utils.TritonError.INTERNAL)
        t0 = time.perf_counter()
        try:
            scores = self.ranker.rank(req)
        except ValueError as exc:  # a rule of the pool's own that schema does not state
            return error_response(f"hstu_pool: {exc}")
        self.service_times.record((time.perf_counter() - t0) * 1e3)
        return pb_utils.InferenceResponse(output_tensors=[output_tensor(schema.SCORES, scores)])

    def _bls(self, req: RankRequest) -> Any:
        """Forward the valid request to the `hstu` model and relay its answer or error."""
        inputs = [
            output_tensor(schema.HISTORY_ITEM_IDS, req.hist_ids),
            output_tensor(schema.HISTORY_TIMESTAMPS, req.hist_ts),
            output_tensor(schema.HISTORY_ACTIONS, req.hist_actions),
            output_tensor(schema.CANDIDATE_ITEM_IDS, req.cand_ids),
            output_tensor(schema.QUERY_TIMESTAMP, torch.tensor([req.query_ts], dtype=torch.int64)),
        ]
        response = pb_utils.InferenceRequest(
            model_name=NETWORK_MODEL,
            requested_output_names=[schema.SCORES],
            inputs=inputs,
        ).exec()
        if response.has_error():
            return error_response(f"{NETWORK_MODEL}: {response.error().message()}", pb_utils.TritonError.INTERNAL)
        scores = pb_utils.get_output_tensor_by_name(response, schema.SCORES)
        return pb_utils.InferenceResponse(output_tensors=[output_tensor(schema.SCORES, to_torch(scores))])

    def finalize(self) -> None:
        if self.mode == "inprocess":
            self.control.stop()
            self.ranker.close()
