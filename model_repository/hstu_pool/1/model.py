"""Triton shim for `hstu_pool`: the logic lives in python_backend.serving.hstu_pool."""

from python_backend.serving.hstu_pool import TritonPythonModel

__all__ = ["TritonPythonModel"]
