"""Triton shim for `hstu`: the logic lives in helmrec.serving.hstu_net."""

from helmrec.serving.hstu_net import TritonPythonModel

__all__ = ["TritonPythonModel"]
