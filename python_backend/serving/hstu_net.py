"""`hstu`: the bare HSTU network as a Triton model (uncached full forward).

It serves callers who want the network alone, and it is what `hstu_pool`
calls by BLS when configured with `network: "bls"` (the TensorRT-engine
deployment, where this model is a `tensorrt_plan` instead).
"""

from __future__ import annotations

from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from helmrec import schema
from helmrec.serving.network import load_network, resolve_device, serving_dtype
from helmrec.serving.triton_io import ModelArgs, error_response, input_tensor, output_tensor

class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.device = resolve_device(model.parameter("device", "auto"), model.instance_kind, model.device_id)
        dtype = serving_dtype(model.parameter("dtype", "auto"), self.device)
        self.network = load_network(model.path_parameter("weights"), self.device, dtype)
        cfg = self.network.config
        self.limits = schema.Limits(cfg.num_items, cfg.num_actions, cfg.max_seq_len, cfg.max_candidates)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        try:
            req = schema.validate({n: input_tensor(request, n) for n in schema.NETWORK_INPUTS}, self.limits, with_user=False)
        except schema.RequestError as exc:
            return error_response(str(exc))
        query = input_tensor(request, schema.QUERY_TIMESTAMP)
        query_ts = req.query_ts if query is None else int(query.reshape(-1)[0])
        dev = self.device
        with torch.inference_mode():
            scores = self.network.score(
                req.hist_ids.to(dev), req.hist_ts.to(dev), req.hist_actions.to(dev), req.cand_ids.to(dev), query_ts
            )
        return pb_utils.InferenceResponse(output_tensors=[output_tensor(schema.SCORES, scores.float())])
