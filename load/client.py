"""Building stock-tritonclient requests from numpy arrays.

One helper for every caller that talks to `hstu_ensemble` (demo, Locust,
benchmarks, tests), so the wire dtype always follows the array's dtype the
way Triton names it; `helmrec.schema.ensemble_request` builds the arrays under
the contract's names and dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype


def infer_inputs(module: ModuleType, arrays: Mapping[str, np.ndarray], binary_data: bool = True) -> list[Any]:
    """`module.InferInput`s (module: tritonclient.grpc or tritonclient.http) holding `arrays`.

    `binary_data=False` makes HTTP inputs travel as JSON instead of the binary-tensor
    extension (gRPC inputs are always binary, so it is ignored there).
    """
    inputs = []
    for name, value in arrays.items():
        tensor = module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        if module.__name__ == "tritonclient.http":
            tensor.set_data_from_numpy(value, binary_data=binary_data)
        else:
            tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs
