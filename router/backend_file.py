"""`helmrec route --backend-file PATH`: the backend list in a file, re-read while the router runs.

Operators add or remove Triton instances by editing one file (or having their
orchestration write it) instead of restarting the router: every router
process (each `--workers` worker, each router host) watches the file itself,
polling its modification time and size, and re-reads it at once on SIGHUP.
A file that does not parse changes nothing: the router keeps the last good
set and logs the file, the line and the rule broken, so a half-written edit
never empties the cluster.

Format: one `--backend` spec per line (`HOST:GRPC_PORT[,http=PORT][,metrics=PORT]`);
`#` starts a comment; blank lines are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from helmrec.router.config import BackendAddress, ConfigError

log = logging.getLogger("helmrec.router")

# (mtime_ns, size, inode): a rewrite in place or a rename over the file both change it.
Stamp = tuple[int, int, int]


def parse_backend_file(path: Path) -> tuple[BackendAddress, ...]:
    """The backends a file lists, in order; ConfigError naming `path:line` on the first bad line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--backend-file {path}: cannot be read ({exc})") from None
    backends: list[BackendAddress] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        try:
            address = BackendAddress.parse(spec)
        except ConfigError as exc:
            raise ConfigError(f"--backend-file {path}:{number}: {exc}") from None
        if address.grpc_target in seen:
            raise ConfigError(
                f"--backend-file {path}:{number}: {address.grpc_target} is already listed on line {seen[address.grpc_target]}"
            )
        seen[address.grpc_target] = number
        backends.append(address)
    if not backends:
        raise ConfigError(f"--backend-file {path}: lists no backend (one HOST:GRPC_PORT[,http=PORT][,metrics=PORT] a line)")
    return tuple(backends)


def stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class BackendFileWatcher:
    """Re-reads the file when its stamp changes (every `interval_s`) or `reload()` is called (SIGHUP).

    `apply` gets each new good set; `tick` runs every poll whatever happened
    (the server closes channels of removed backends that finished draining).
    """

    def __init__(
        self,
        path: Path,
        apply: Callable[[tuple[BackendAddress, ...]], Awaitable[None]],
        tick: Callable[[], Awaitable[None]],
        interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self._apply = apply
        self._tick = tick
        self._stamp: Stamp | None = None  # the first poll re-reads: the file may have changed since the CLI read it
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reload(self) -> None:
        """Re-read now (SIGHUP), even if the stamp did not change."""
        self._stamp = None
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            current = stamp(self.path)
            if current != self._stamp:
                self._stamp = current
                await self._read()
            await self._tick()

    async def _read(self) -> None:
        try:
            backends = parse_backend_file(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("%s; keeping the last good backend list", exc)
            return
        self.last_error = None
        await self._apply(backends)
