"""Start the Triton server bundled in nvidia-pytriton (or another binary) on a model repository."""

from helmrec.launcher.admin import AdminHeader
from helmrec.launcher.binary import LauncherError, TritonDistribution, locate
from helmrec.launcher.server import TritonServer, free_port

__all__ = ["AdminHeader", "LauncherError", "TritonDistribution", "TritonServer", "free_port", "locate"]
