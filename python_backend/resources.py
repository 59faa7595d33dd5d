"""Where the files that ship inside the package live, found one way for a checkout,
an editable install and a wheel alike: through the import system, never by
walking up from a source file (a wheel has no checkout above it)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def model_repository() -> Path:
    """The packaged Triton model repository: config.pbtxt and the model.py shims, no weights."""
    return Path(str(files("helmrec.model_repository")))


def default_policy() -> Path:
    """The trained alpha policy (`helmrec train-allocator` writes it; `helmrec.allocator` ships it)."""
    return Path(str(files("helmrec.allocator") / "policy.npz"))


def locustfile() -> Path:
    """The Locust workload file, for `locust -f`; found without importing it (importing it patches grpc for gevent)."""
    return Path(str(files("helmrec.load") / "locustfile.py"))
