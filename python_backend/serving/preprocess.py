"""`preprocess`: the CPU stage of the ensemble (FLAME's CPU/GPU split).

It validates every request against the served network's limits and packs it
into int64 tensors, so the single GPU-owning `hstu_pool` instance never spends
time on a request that would fail. Many CPU instances run it in parallel.
"""

from __future__ import annotations

from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from python_backend.serving import schema
from python_backend.serving.network import read_limits
from python_backend.serving.triton_io import ModelArgs, error_response, input_tensor, output_tensor

class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.limits = read_limits(model.path_parameter("weights"))

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        try:
            req = schema.validate({n: input_tensor(request, n) for n in schema.PUBLIC_INPUTS}, self.limits)
        except schema.RequestError as exc:
            return error_response(str(exc))
        return pb_utils.InferenceResponse(
            output_tensors=[
                output_tensor(schema.USER_ID, _scalar(req.user_id)),
                output_tensor(schema.HISTORY_ITEM_IDS, req.hist_ids),
                output_tensor(schema.HISTORY_TIMESTAMPS, req.hist_ts),
                output_tensor(schema.HISTORY_ACTIONS, req.hist_actions),
                output_tensor(schema.CANDIDATE_ITEM_IDS, req.cand_ids),
                output_tensor(schema.QUERY_TIMESTAMP, _scalar(req.query_ts)),
            ]
        )



def _scalar(value: int) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64)
