"""Triton shim for `hstu`: the logic lives in python_backend.serving.hstu_net."""

from python_backend.serving.hstu_net import TritonPythonModel

__all__ = ["TritonPythonModel"]
