"""Embedding cache: hot item rows in EMB pages, evicted by frequency with recency.

Bookkeeping is host-side numpy (a dense id->slot index and per-slot arrays)
so a request's lookup is a few vectorised gathers; only the row data lives in
the pool's device pages. A slot is `page * rows_per_page + row`.

Admission is two-phase so the H2D copy runs outside the pool lock: `reserve`
picks slots (evicting victims) and marks them RESERVED, which lookups treat
as misses; after the background copy, `publish` makes the rows visible, but
only if the page was not taken away by an alpha move in between (each page
carries a generation number bumped on release). That is what guarantees an
evicted or half-written row is never served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from helmrec.pool.pages import PageAllocator, Side

UNMAPPED = -3  # slot_item: the slot lies on a page the EMB cache does not hold
RESERVED = -2  # item_slot: a background copy of this item is in flight
FREE = -1  # slot_item: empty slot on a held page / item_slot: item not resident

# Recency only breaks near-ties: its total weight (< 1e-3) is far below the
# +1 a single lookup adds to a frequency, so frequency decides and recency
# picks among rows equally often used (the least recently used goes first).
_RECENCY_WEIGHT = 1e-3


# Victim choice is exact up to this many held slots, sampled beyond (see `_victims`).
_EXACT_VICTIM_SLOTS = 65536
_VICTIM_SAMPLE = 16


@dataclass(frozen=True)
class Reservation:
    """Slots set aside for items whose rows are being copied in the background."""

    items: np.ndarray
    slots: np.ndarray
    generations: np.ndarray

    @property
    def size(self) -> int:
        return int(self.items.size)


class EmbCache:
    def __init__(self, allocator: PageAllocator, rows: torch.Tensor, num_items: int, aging_lookups: int) -> None:
        """`rows` is the pool viewed as [num_pages, rows_per_page, D] (a strided view, no copy)."""
        self._alloc = allocator
        self._rows = rows
        self.num_pages, self.rows_per_page, self.width = rows.shape
        num_slots = self.num_pages * self.rows_per_page
        self._slot_item = np.full(num_slots, UNMAPPED, dtype=np.int64)
        self._reserved = np.zeros(num_slots, dtype=bool)
        self._last_use = np.zeros(num_slots, dtype=np.int64)
        self._page_gen = np.zeros(self.num_pages, dtype=np.int64)
        self._item_slot = np.full(num_items, FREE, dtype=np.int64)
        self._freq = np.zeros(num_items, dtype=np.float32)
        self._tick = 0
        self._since_aging = 0
        self._aging_lookups = aging_lookups
        # Free slots of held pages as (slot, page generation): taking k slots costs O(k), not a
        # scan of the whole pool. Entries of a page released since are stale and skipped.
        self._free_stack: list[tuple[int, int]] = []
        self._free_in_held = 0
        self._rng = np.random.default_rng(0)
        # Refill candidates (looked-up items that are not resident) appear only through a miss or a
        # change of residency; `_changes` counts those, and a refill scan that found none records
        # the count it saw, so the O(num_items) scan is skipped until something changes (in a
        # steady state of hits it never runs; it cost a quarter of a core, every 2 ms, on the H100 host).
        self._changes = 0
        self._scanned_at = -1

    # -- request path -------------------------------------------------------------------------
    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id (negative = miss); counts every lookup toward frequency."""
        self._tick += 1
        # Counts of repeated ids added once each: np.add.at is ~4x slower for a group's few thousand ids.
        items, counts = np.unique(ids, return_counts=True)
        self._freq[items] += counts
        slots = self._item_slot[ids]
        if slots.size and slots.min() < 0:
            self._changes += 1
        self._last_use[slots[slots >= 0]] = self._tick
        self._since_aging += ids.size
        if self._since_aging >= self._aging_lookups:
            # TinyLFU-style aging: halving keeps counts bounded and lets yesterday's hits fade.
            self._freq *= 0.5
            self._since_aging = 0
        return slots

    def gather(self, slots: np.ndarray) -> torch.Tensor:
        """Copy the rows of `slots` out of the pool ([k, D], a fresh tensor)."""
        index = torch.from_numpy(slots).to(self._rows.device)
        return self._rows[index // self.rows_per_page, index % self.rows_per_page]

    # -- background admission / refill ----------------------------------------------------------
    def reserve(self, candidates: np.ndarray, max_rows: int, evict: bool) -> tuple[Reservation, int]:
        """Set aside slots for the most frequent non-resident candidates.

        Free slots are used first (allocating EMB pages as needed); with `evict`
        a candidate may replace the least-valuable row only if it is strictly
        more frequent, so one-hit wonders never push out hot rows.
        Returns the reservation and the number of rows evicted.
        """
        items = np.unique(candidates)
        items = items[self._item_slot[items] == FREE]
        if items.size == 0 or max_rows <= 0:
            return _empty_reservation(), 0
        items = items[np.argsort(-self._freq[items], kind="stable")][:max_rows]
        slots = self._take_free_slots(items.size)
        evicted = 0
        if slots.size < items.size and evict:
            rest = items[slots.size :]
            victims = self._victims(rest.size)
            wins = self._freq[rest[: victims.size]] > self._freq[self._slot_item[victims]]
            count = victims.size if wins.all() else int(np.argmin(wins))
            victims = victims[:count]
            self._item_slot[self._slot_item[victims]] = FREE
            self._slot_item[victims] = FREE
            evicted = count
            self._changes += count > 0  # evicted items become refill candidates
            slots = np.concatenate([slots, victims])
        items = items[: slots.size]
        self._slot_item[slots] = items
        self._reserved[slots] = True
        self._item_slot[items] = RESERVED
        return Reservation(items, slots, self._page_gen[slots // self.rows_per_page]), evicted

    def publish(self, reservation: Reservation, rows: torch.Tensor) -> int:
        """Write copied rows into their reserved slots and make them visible; returns rows published."""
        slots, items = reservation.slots, reservation.items
        valid = (
            (self._page_gen[slots // self.rows_per_page] == reservation.generations)
            & (self._slot_item[slots] == items)
            & self._reserved[slots]
        )
        keep = np.flatnonzero(valid)
        if keep.size:
            slot_index = torch.from_numpy(slots[keep]).to(self._rows.device)
            row_index = torch.from_numpy(keep).to(rows.device)
            self._rows[slot_index // self.rows_per_page, slot_index % self.rows_per_page] = rows[row_index].to(
                self._rows.device
            )
            self._reserved[slots[keep]] = False
            self._item_slot[items[keep]] = slots[keep]
            self._last_use[slots[keep]] = self._tick
        return int(keep.size)

    def cancel(self, reservation: Reservation) -> None:
        """Give back reserved slots whose copy failed."""
        self._changes += 1
        slots, items = reservation.slots, reservation.items
        live = (self._page_gen[slots // self.rows_per_page] == reservation.generations) & self._reserved[slots]
        self._slot_item[slots[live]] = FREE
        self._reserved[slots[live]] = False
        self._item_slot[items[live]] = FREE
        gens = reservation.generations[live]
        self._free_stack.extend(zip(slots[live].tolist(), gens.tolist()))
        self._free_in_held += int(live.sum())

    def refill_candidates(self, limit: int) -> np.ndarray:
        """The hottest items that are neither resident nor in flight (at most `limit`).

        Safe to call without the pool lock: it only reads, and a stale answer is
        harmless because `reserve` re-checks residency under the lock. That keeps
        this O(num_items) scan from ever blocking a request.
        """
        changes = self._changes
        if limit <= 0 or changes == self._scanned_at:
            return np.empty(0, dtype=np.int64)
        pool = np.flatnonzero((self._item_slot == FREE) & (self._freq > 0))
        if pool.size == 0:
            self._scanned_at = changes  # none as of `changes`: the next scans can wait for a change
        elif pool.size > limit:
            pool = pool[np.argpartition(-self._freq[pool], limit - 1)[:limit]]
        return pool

    # -- alpha moves ------------------------------------------------------------------------------
    def release_pages(self, count: int) -> tuple[int, int]:
        """Hand `count` held pages back to the allocator, cheapest first; returns (pages, rows evicted).

        A page's value is the summed frequency of its rows; pages with nothing
        resident go first. Eviction is metadata only: no data is copied.
        """
        self._changes += 1
        held = self._alloc.pages_in_use(Side.EMB)
        if count <= 0 or held.size == 0:
            return 0, 0
        slot_items = self._slot_item.reshape(self.num_pages, self.rows_per_page)[held]
        live = (slot_items >= 0) & ~self._reserved.reshape(self.num_pages, self.rows_per_page)[held]
        value = np.where(live, self._freq[np.maximum(slot_items, 0)], 0.0).sum(axis=1)
        chosen = held[np.argsort(value, kind="stable")[:count]]
        evicted = 0
        for page in chosen.tolist():
            lo, hi = page * self.rows_per_page, (page + 1) * self.rows_per_page
            page_items = self._slot_item[lo:hi]
            resident = page_items[page_items >= 0]
            evicted += int((~self._reserved[lo:hi][page_items >= 0]).sum())
            self._free_in_held -= int((page_items == FREE).sum())
            self._item_slot[resident] = FREE  # in-flight items too: their publish will fail the generation check
            self._slot_item[lo:hi] = UNMAPPED
            self._reserved[lo:hi] = False
            self._page_gen[page] += 1
            self._alloc.release(Side.EMB, page)
        return int(chosen.size), evicted

    # -- introspection ------------------------------------------------------------------------------
    def free_slots(self) -> int:
        """Empty slots of held pages plus every slot of the side's free pages."""
        return self._free_in_held + self._alloc.free_count(Side.EMB) * self.rows_per_page

    def resident_items(self) -> np.ndarray:
        return np.flatnonzero(self._item_slot >= 0)

    def slots_of(self, items: np.ndarray) -> np.ndarray:
        return self._item_slot[items]

    def check(self) -> None:
        """Raise if the index and the slot map disagree or a slot lies outside a held EMB page."""
        per_page = self._slot_item.reshape(self.num_pages, self.rows_per_page)
        held = np.zeros(self.num_pages, dtype=bool)
        held[self._alloc.pages_in_use(Side.EMB)] = True
        if (per_page[~held] != UNMAPPED).any():
            raise AssertionError("a slot outside the EMB cache's pages holds a row")
        if (per_page[held] == UNMAPPED).any():
            raise AssertionError("a held EMB page has unmapped slots")
        resident = np.flatnonzero(self._item_slot >= 0)
        slots = self._item_slot[resident]
        if (self._slot_item[slots] != resident).any() or self._reserved[slots].any():
            raise AssertionError("id->slot index points at a slot holding another item or a pending copy")
        if np.unique(slots).size != slots.size:
            raise AssertionError("two items share one slot")
        live = (self._slot_item >= 0) & ~self._reserved
        if int(live.sum()) != resident.size:
            raise AssertionError("a slot holds a row the index does not know")
        if int((self._slot_item == FREE).sum()) != self._free_in_held:
            raise AssertionError("free-slot count disagrees with the slot map")
        pending = np.flatnonzero(self._reserved)
        if (self._item_slot[self._slot_item[pending]] != RESERVED).any():
            raise AssertionError("a reserved slot's item is not marked in flight")

    # -- internals ------------------------------------------------------------------------------------
    def _take_free_slots(self, count: int) -> np.ndarray:
        """Up to `count` empty slots, mapping new EMB pages when the held ones are full."""
        taken: list[int] = []
        while len(taken) < count:
            if not self._free_stack:
                page = self._alloc.allocate(Side.EMB)
                if page is None:
                    break
                lo = page * self.rows_per_page
                self._slot_item[lo : lo + self.rows_per_page] = FREE
                self._free_in_held += self.rows_per_page
                gen = int(self._page_gen[page])
                self._free_stack.extend((slot, gen) for slot in range(lo + self.rows_per_page - 1, lo - 1, -1))
                continue
            slot, gen = self._free_stack.pop()
            if self._page_gen[slot // self.rows_per_page] == gen and self._slot_item[slot] == FREE:
                taken.append(slot)
        self._free_in_held -= len(taken)
        return np.array(taken, dtype=np.int64)

    def _victims(self, count: int) -> np.ndarray:
        """Up to `count` resident slots of lowest (frequency, recency), lowest first.

        Exact over a small pool; past `_EXACT_VICTIM_SLOTS` slots it ranks a random
        sample of `_VICTIM_SAMPLE` slots per victim (Redis-style sampled LFU), so the
        lock is held for O(count) work instead of a scan of a million-slot pool.
        """
        held = self._alloc.pages_in_use(Side.EMB)
        if held.size * self.rows_per_page <= _EXACT_VICTIM_SLOTS:
            used = np.flatnonzero((self._slot_item >= 0) & ~self._reserved)
        else:
            pages = held[self._rng.integers(0, held.size, count * _VICTIM_SAMPLE)]
            sample = pages * self.rows_per_page + self._rng.integers(0, self.rows_per_page, pages.size)
            sample = np.unique(sample)
            used = sample[(self._slot_item[sample] >= 0) & ~self._reserved[sample]]
        if used.size == 0:
            return used
        score = self._freq[self._slot_item[used]].astype(np.float64)
        score += _RECENCY_WEIGHT * self._last_use[used] / (self._tick + 1)
        if count < used.size:
            part = np.argpartition(score, count - 1)[:count]
            used, score = used[part], score[part]
        return used[np.argsort(score, kind="stable")][:count]


def _empty_reservation() -> Reservation:
    empty = np.empty(0, dtype=np.int64)
    return Reservation(empty, empty, empty)
