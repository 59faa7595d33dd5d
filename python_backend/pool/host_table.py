"""The full item-embedding table in host memory, and the copies out of it.

The item table is far larger than the pool (DLRMv3: 1e9 rows), so it lives in
host DRAM; the pool only caches hot rows. Two kinds of copy leave this table
and the pool counts them apart: *critical* copies gather the rows a request
missed and the request waits for them; *background* copies feed admission and
refill, and no request ever waits for them. On CUDA each kind has its own
stream and its own pinned staging buffer, so a background refill can never
queue in front of a request's miss copy.
"""

from __future__ import annotations

import torch


class _Stager:
    """A reusable pinned staging buffer plus the stream that copies it to the device."""

    def __init__(self, table: torch.Tensor, device: torch.device) -> None:
        self._table = table
        self._device = device
        self._stream = torch.cuda.Stream(device)
        self._buffer = torch.empty(0, table.shape[1], dtype=table.dtype).pin_memory()
        self._done = torch.cuda.Event()

    def copy(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        self._done.synchronize()  # the previous copy out of the buffer has finished
        if self._buffer.shape[0] < ids.numel():
            self._buffer = torch.empty(2 * ids.numel(), self._table.shape[1], dtype=self._table.dtype).pin_memory()
        staged = self._buffer[: ids.numel()]
        torch.index_select(self._table, 0, ids, out=staged)
        with torch.cuda.stream(self._stream):
            rows = staged.to(self._device, non_blocking=True)
            self._done.record(self._stream)
        return rows, self._done


class PendingRows:
    """Rows on their way to the device; `wait()` makes the caller's stream wait for them."""

    def __init__(self, rows: torch.Tensor, done: torch.cuda.Event | None) -> None:
        self._rows = rows
        self._done = done

    def wait(self) -> torch.Tensor:
        if self._done is not None:
            stream = torch.cuda.current_stream(self._rows.device)
            stream.wait_event(self._done)
            self._rows.record_stream(stream)
        return self._rows


class HostTable:
    """Read-only host copy of the item table (pinned where a GPU exists)."""

    def __init__(self, weight: torch.Tensor, device: torch.device) -> None:
        if weight.dim() != 2:
            raise ValueError(f"item table must be 2-D [num_items, D], got shape {tuple(weight.shape)}")
        table = weight.detach().to("cpu").contiguous()
        self.device = device
        if device.type == "cuda":
            table = table.pin_memory()
            self._critical: _Stager | None = _Stager(table, device)
            self._background: _Stager | None = _Stager(table, device)
        else:
            self._critical = self._background = None
        self.table = table

    @property
    def num_items(self) -> int:
        return self.table.shape[0]

    @property
    def width(self) -> int:
        return self.table.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def row_bytes(self) -> int:
        return self.table.shape[1] * self.table.element_size()

    def fetch_critical(self, ids: torch.Tensor) -> PendingRows:
        """Start the copy of a request's missed rows; overlaps with whatever runs before `wait()`."""
        if self._critical is None:
            return PendingRows(self.table.index_select(0, ids), None)
        rows, done = self._critical.copy(ids)
        return PendingRows(rows, done)

    def fetch_background(self, ids: torch.Tensor) -> torch.Tensor:
        """Copy rows for admission/refill; blocks only the background thread that calls it."""
        if self._background is None:
            return self.table.index_select(0, ids)
        rows, done = self._background.copy(ids)
        done.synchronize()
        # Allocated on the refill stream, consumed on the caller's: keep the allocator
        # from handing the block back to the refill stream while a write still reads it.
        rows.record_stream(torch.cuda.current_stream(self.device))
        return rows
