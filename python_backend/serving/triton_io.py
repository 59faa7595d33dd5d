"""Moving tensors between Triton's Python backend and torch.

Everything crosses with DLPack, never through `as_numpy()`: DLPack keeps GPU
tensors on the GPU (no host bounce), and it is the path that works whatever
numpy the stub's environment has (under numpy 2, Tensors built from numpy arrays
came back empty from this backend, while DLPack ones did not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def to_torch(tensor: Any) -> torch.Tensor:
    """A pb_utils.Tensor as a torch tensor on the same device, zero-copy."""
    return torch.from_dlpack(tensor.to_dlpack())


def input_tensor(request: Any, name: str) -> torch.Tensor | None:
    """The named input as a torch tensor (zero-copy), or None when it was not sent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else to_torch(tensor)


def input_arrays(request: Any, names: tuple[str, ...]) -> dict[str, np.ndarray | None]:
    """The named inputs as host numpy arrays for `schema.validate` (zero-copy for host
    tensors), None where not sent."""
    tensors = {name: input_tensor(request, name) for name in names}
    return {name: None if t is None else t.cpu().numpy() for name, t in tensors.items()}


def output_tensor(name: str, value: torch.Tensor) -> Any:
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))


def error_response(message: str, code: Any = None) -> Any:
    """A per-request error; INVALID_ARG unless told otherwise, so clients see a 400-class error."""
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class ModelArgs:
    """What Triton passes to `initialize`: the parsed config and where the model lives."""

    def __init__(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.name: str = args["model_name"]
        self.directory = Path(args["model_repository"])
        self.version = args.get("model_version", "1")
        self.instance_kind: str = args.get("model_instance_kind", "CPU")
        self.device_id = int(args.get("model_instance_device_id", "0") or 0)

    def parameter(self, key: str, default: str | None = None) -> str:
        """A `parameters { key: ... }` entry of config.pbtxt; a clear error when required and absent."""
        params = self.config.get("parameters", {})
        if key in params:
            return str(params[key]["string_value"])
        if default is None:
            raise pb_utils.TritonModelException(f"model {self.name}: config.pbtxt needs parameter '{key}'")
        return default

    def parameters(self) -> dict[str, str]:
        """Every `parameters` entry as key -> string value, as config.pbtxt states them."""
        return {k: str(v["string_value"]) for k, v in self.config.get("parameters", {}).items()}

    def path_parameter(self, key: str) -> Path:
        """A path parameter, relative to this model's folder in the repository."""
        return (self.directory / self.parameter(key)).resolve()
