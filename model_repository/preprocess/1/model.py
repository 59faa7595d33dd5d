"""Triton shim for `preprocess`: the logic lives in python_backend.serving.preprocess."""

from python_backend.serving.preprocess import TritonPythonModel

__all__ = ["TritonPythonModel"]
