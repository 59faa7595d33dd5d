"""Triton shim for `hstu_pool`: the logic lives in helmrec.serving.hstu_pool."""

from helmrec.serving.hstu_pool import TritonPythonModel

__all__ = ["TritonPythonModel"]
