"""`hstu_pool`: the single owner of the node's HBM pool.

One instance per GPU. It receives requests already validated and packed by
`preprocess` and answers each with SCORES [num_candidates, num_tasks].
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from python_backend.serving import schema
from python_backend.serving.triton_io import ModelArgs, error_response, output_tensor, to_torch

NETWORK_MODEL = "hstu"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.model = ModelArgs(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._bls(request) for request in requests]

    def _bls(self, request: Any) -> Any:
        """Forward the packed request to the `hstu` model and relay its answer or error."""
        inputs = [
            pb_utils.get_input_tensor_by_name(request, name)
            for name in schema.PACKED_INPUTS
            if name != schema.USER_ID
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

