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
from helmrec.serving.triton_io import ModelArgs, error_response, input_arrays, output_tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.device = resolve_device(model.parameter("device"), model.instance_kind, model.device_id)
        dtype = serving_dtype(model.parameter("dtype"), self.device)
        self.network = load_network(model.path_parameter("weights"), self.device, dtype)
        self.limits = schema.Limits.of(self.network.config)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        """schema's rules once, then the network's unchecked forward: nothing is checked twice."""
        try:
            req = schema.validate(input_arrays(request, schema.NETWORK_INPUTS), self.limits, with_user=False)
        except schema.RequestError as exc:
            return error_response(str(exc))
        net, dev = self.network, self.device
        with torch.inference_mode():
            hist_emb = net.item_emb(torch.from_numpy(req.hist_ids).to(dev))
            cand_emb = net.item_emb(torch.from_numpy(req.cand_ids).to(dev))
            scores = net.forward_unchecked(
                hist_emb,
                torch.from_numpy(req.hist_ts).to(dev),
                torch.from_numpy(req.hist_actions).to(dev),
                cand_emb,
                torch.tensor(req.query_ts, dtype=torch.int64, device=dev),
            )
        return pb_utils.InferenceResponse(output_tensors=[output_tensor(schema.SCORES, scores.float())])
