"""The data planes router tests run on: Python (grpc.aio) and the native hop.

The native one needs the helmrec-hop binary (`make hop`, grpc++). Where it is
missing its tests skip, unless HELMREC_REQUIRE_HOP=1 (set by CI, which
installs grpc++): then they fail, so CI never passes without running them.
"""

from __future__ import annotations

import os

import pytest

from helmrec.router.native_hop import HopMissing, locate


def _missing_reason() -> str | None:
    if os.environ.get("HELMREC_REQUIRE_HOP") == "1":
        return None
    try:
        locate()
    except HopMissing as exc:
        return str(exc)
    return None


_REASON = _missing_reason()
needs_hop = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
DATA_PLANES = [pytest.param("python"), pytest.param("native", marks=needs_hop)]
