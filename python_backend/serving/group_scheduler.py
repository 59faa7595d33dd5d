"""Groups of waiting requests, served by one thread while the stub keeps taking new ones.

A Python-backend `execute` that ranks its requests before returning holds the model
instance for the whole GPU step: requests that arrive meanwhile wait in Triton's
queue, and host work (validation, tensor hand-over) never overlaps the GPU. On the
H200 (`large`, history 2048, 256 candidates) that served 1,734 KV hits/s at 32
clients against 3,285/s for the same groups in-process (docs/gpu.md).

So `hstu_pool.execute` only validates and enqueues (request, answer callback) and
returns; this scheduler's thread takes everything waiting, at most `max_group` at a
time, hands the group to `serve` and answers each request. Nothing is lost on a
fault: if `serve` raises, every request of that group gets the error, and the thread
goes on with the next group; `close` serves what is queued before it returns.
The queue is bounded (`max_waiting`): when it is full, `submit` blocks, so the
stub stops taking requests and Triton's own queue holds them (backpressure),
instead of this process growing without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_CLOSE = object()
log = logging.getLogger(__name__)


class GroupScheduler(Generic[Item, Result]):
    """One thread serving groups of queued items with `serve(items) -> results` (one result per item)."""

    def __init__(
        self,
        serve: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_group: int,
        max_waiting: int,
        name: str = "group-scheduler",
    ) -> None:
        if max_group < 1 or max_waiting < max_group:
            raise ValueError(f"GroupScheduler needs 1 <= max_group <= max_waiting, got {max_group} and {max_waiting}")
        self._serve = serve
        self._max_group = max_group
        self._queue: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self.groups = 0  # groups served so far (read by tests and metrics)
        self._thread.start()

    def submit(self, item: Item, answer: Callable[[Result | BaseException], None]) -> None:
        """Queue `item`; `answer` is called once, from the scheduler's thread, with its result or error."""
        if self._closed:
            raise RuntimeError("GroupScheduler: closed, no new requests")
        self._queue.put((item, answer))

    def close(self, timeout_s: float = 60.0) -> None:
        """Serve what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s)

    def _take_group(self) -> tuple[list, bool]:
        """Block for one entry, then take what else is waiting (up to max_group); True once closing."""
        first = self._queue.get()
        if first is _CLOSE:
            return [], True
        group = [first]
        while len(group) < self._max_group:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _CLOSE:
                return group, True
            group.append(entry)
        return group, False

    def _run(self) -> None:
        closing = False
        while not closing:
            group, closing = self._take_group()
            if not group:
                continue
            items = [item for item, _ in group]
            try:
                results: Sequence[Result | BaseException] = self._serve(items)
                if len(results) != len(items):
                    raise RuntimeError(f"serve returned {len(results)} results for {len(items)} requests")
            except BaseException as exc:  # noqa: BLE001 - every request of the group must hear of it
                results = [exc] * len(items)
            self.groups += 1
            for (_, answer), result in zip(group, results):
                try:
                    answer(result)
                except Exception:  # noqa: BLE001 - one client's broken answer path must not stop the others'
                    log.exception("GroupScheduler: answering a request failed")
