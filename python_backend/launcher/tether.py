"""Start a child process that cannot outlive this one.

Linux delivers a parent-death signal (prctl PR_SET_PDEATHSIG) when the *thread*
that forked a child exits, not when the process does. Callers start servers from
short-lived threads (a ThreadPoolExecutor that starts three backends at once), so
every fork happens on one long-lived spawner thread of this process: the signal
then fires only when the process itself is gone, including by SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_spawner: tuple[int, ThreadPoolExecutor] | None = None


def _spawner_thread() -> ThreadPoolExecutor:
    """One worker thread per process; a forked child of ours gets its own."""
    global _spawner
    with _lock:
        if _spawner is None or _spawner[0] != os.getpid():
            _spawner = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="helmrec-spawner"))
        return _spawner[1]


def _die_with(parent: int, sig: signal.Signals) -> Any:
    """preexec_fn: ask for `sig` when the parent dies; if it already died, go now."""

    def arm() -> None:
        if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)  # never run untethered
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(127)

    return arm


def spawn(args: list[str], sig: signal.Signals = signal.SIGTERM, **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(args, **popen)` whose process receives `sig` when this process dies.

    SIGTERM by default: tritonserver then shuts down the way it does on Ctrl-C,
    ending its Python-backend stubs and unlinking their shared memory itself.
    """
    parent = os.getpid()
    future = _spawner_thread().submit(subprocess.Popen, args, preexec_fn=_die_with(parent, sig), **popen)
    return future.result()
