"""Close Triton's state-changing APIs to clients that lack the operator's header.

Any client that reaches tritonserver could otherwise raise log verbosity (100
requests wrote 649 KB of log), turn error logging off, register shared-memory
regions beside the Python backend's own, or load and unload models. Triton 2.51
restricts whole API groups behind one header (`--http-restricted-api`,
`--grpc-restricted-protocol`); we restrict the groups that change state. The
default value is a random secret that is printed nowhere, so those APIs are
simply closed unless the operator chooses a header.

A refused call gets HTTP 403 or gRPC UNAVAILABLE (Triton's choice of code) with
"This API is restricted, expecting header '<name>'".

Left open: inference, health, metadata, model-config (what stock clients and the
router need), and statistics (read-only, the same counts the metrics port
publishes; the router forwards it).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

RESTRICTED = ("logging", "shared-memory", "model-repository", "trace")
ENV = "HELMREC_ADMIN_HEADER"
DEFAULT_NAME = "helmrec-admin-key"
# Triton 2.51 expects the header over gRPC as metadata `triton-grpc-protocol-<name>`.
GRPC_PREFIX = "triton-grpc-protocol-"
# gRPC metadata keys are lowercase; Triton splits the flag at ':' and '='.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_VALUE = re.compile(r"[A-Za-z0-9_.~+/-]+")


@dataclass(frozen=True)
class AdminHeader:
    """The header (name and value) a client must send to use a restricted API."""

    name: str
    value: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"admin header name {self.name!r}: use lowercase letters, digits, '-', '_' or '.' "
                "(gRPC metadata keys are lowercase)"
            )
        if not _VALUE.fullmatch(self.value):
            raise ValueError(f"admin header {self.name}: its value may hold only letters, digits and _.~+/-")

    @classmethod
    def parse(cls, text: str) -> AdminHeader:
        """`name=value`, the form of --admin-header and $HELMREC_ADMIN_HEADER."""
        name, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"admin header {text!r}: expected NAME=VALUE")
        return cls(name.strip(), value.strip())

    @classmethod
    def random(cls) -> AdminHeader:
        """A header no client knows: the restricted APIs are closed to everyone."""
        return cls(DEFAULT_NAME, secrets.token_urlsafe(32))

    def http_headers(self) -> dict[str, str]:
        """For tritonclient.http's `headers=` argument."""
        return {self.name: self.value}

    def grpc_headers(self) -> dict[str, str]:
        """For tritonclient.grpc's `headers=`: Triton reads the key as gRPC metadata with its prefix."""
        return {GRPC_PREFIX + self.name: self.value}

    def triton_args(self) -> tuple[str, str]:
        apis = ",".join(RESTRICTED)
        return (
            f"--http-restricted-api={apis}:{self.name}={self.value}",
            f"--grpc-restricted-protocol={apis}:{self.name}={self.value}",
        )
