"""Building stock-tritonclient requests from numpy arrays.

One helper for every caller that talks to `hstu_ensemble` (demo, Locust,
benchmarks, tests), so the wire dtype always follows the array's dtype the
way Triton names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype


def infer_inputs(module: ModuleType, arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """`module.InferInput`s (module: tritonclient.grpc or tritonclient.http) holding `arrays`."""
    inputs = []
    for name, value in arrays.items():
        tensor = module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs
