"""Name what a launcher starts after the launcher, so whatever outlives it can be removed.

Every server gets a Python-backend shared-memory prefix
`helmrec_<launcher pid>_<launcher start time>_<serial>_` (Triton appends a UUID per
stub). The prefix travels in the server's and each stub's command line and names
every `/dev/shm` region they create, so one rule finds them all: the tag's owner
(pid plus start time, so a reused pid never passes for the owner) is gone. Regions
and processes of a live launcher are never touched, nor any without our tag
(another Triton's default `triton_python_backend_shm_region_` regions).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

SHM = Path("/dev/shm")
PROC = Path("/proc")
# Processes that carry a prefix in their command line: the server (in --backend-config) and the stub.
TAGGED_PROGRAMS = ("tritonserver", "triton_python_backend_stub")
_TAG = re.compile(r"helmrec_(\d+)_(\d+)_\d+_")
_serial = itertools.count()


@dataclass(frozen=True)
class Swept:
    """What one sweep removed: process ids killed and shared-memory region names unlinked."""

    killed: tuple[int, ...]
    unlinked: tuple[str, ...]


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which `pid` started (field 22 of /proc/pid/stat); None if gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "(comm)" start at field 3


def region_prefix() -> str:
    """A shared-memory prefix owned by this process, unique among the servers it starts."""
    pid = os.getpid()
    return f"helmrec_{pid}_{_start_time(pid)}_{next(_serial)}_"


def _owner_alive(match: re.Match[str]) -> bool:
    return _start_time(int(match.group(1))) == int(match.group(2))


def remove_regions(prefix: str) -> tuple[str, ...]:
    """Unlink the `/dev/shm` regions named with `prefix` (one dead server's)."""
    unlinked = []
    for region in SHM.glob(f"{prefix}*"):
        try:
            region.unlink()
            unlinked.append(region.name)
        except FileNotFoundError:
            pass  # its own stub unlinked it first
    return tuple(unlinked)


def _tagged_processes() -> list[tuple[int, re.Match[str]]]:
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if not argv[0] or os.path.basename(argv[0].decode(errors="replace")) not in TAGGED_PROGRAMS:
            continue
        match = _TAG.search(b" ".join(argv).decode(errors="replace"))
        if match:
            found.append((int(entry.name), match))
    return found


def sweep() -> Swept:
    """Kill the servers and stubs, then unlink the regions, of launchers that no longer exist."""
    killed = []
    for pid, match in _tagged_processes():
        if not _owner_alive(match):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    unlinked = []
    for region in SHM.glob("helmrec_*"):
        match = _TAG.match(region.name)
        if match and not _owner_alive(match):
            unlinked.extend(remove_regions(region.name))
    return Swept(tuple(killed), tuple(unlinked))
