"""The scheduler decides which job windows hold the engine's slots at each step boundary.

Continuous batching: a window joins any free slot at a step boundary and leaves as soon as it
finishes, without waiting for the others. The number of slots is fixed when the engine starts,
from the maximum batch size and the KV-cache memory budget.
"""
from __future__ import annotations

import threading
import typing as tp
from collections import deque
from dataclasses import dataclass

from .kv_cache import SlotGeometry


class CacheBudgetTooSmall(ValueError):
    """Not even one slot fits the configured KV-cache budget."""


def slots_for_budget(geometry: SlotGeometry, dtype: tp.Any, max_batch_size: int,
                     budget_bytes: int | None) -> int:
    """How many slots to allocate: the batch limit, capped by the memory budget."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    if budget_bytes is None:
        return max_batch_size
    per_slot = geometry.bytes_per_slot(dtype)
    fit = budget_bytes // per_slot
    if fit < 1:
        raise CacheBudgetTooSmall(
            f"the KV-cache budget of {budget_bytes} bytes holds no slot; one slot needs "
            f"{per_slot} bytes (raise the budget or shorten the window)")
    return int(min(max_batch_size, fit))


@dataclass
class Admission:
    slot: int
    item: tp.Any


class Scheduler:
    """FIFO admission of work items into a fixed set of slots; thread-safe submission.

    Items continuing a job that already holds engine work (its next window) go to the front:
    finishing admitted jobs first keeps latency bounded under load.
    """

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.slots: list[tp.Any | None] = [None] * num_slots
        self._waiting: deque[tp.Any] = deque()
        self._lock = threading.Lock()
        self.wakeup = threading.Event()

    def submit(self, item: tp.Any, front: bool = False) -> None:
        with self._lock:
            if front:
                self._waiting.appendleft(item)
            else:
                self._waiting.append(item)
        self.wakeup.set()

    def remove_waiting(self, predicate: tp.Callable[[tp.Any], bool]) -> list[tp.Any]:
        """Take waiting items matching ``predicate`` out of the queue (cancellation)."""
        with self._lock:
            removed = [item for item in self._waiting if predicate(item)]
            self._waiting = deque(item for item in self._waiting if not predicate(item))
        return removed

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def position(self, predicate: tp.Callable[[tp.Any], bool]) -> int | None:
        with self._lock:
            for index, item in enumerate(self._waiting):
                if predicate(item):
                    return index
        return None

    def admit(self) -> list[Admission]:
        """Move waiting items into free slots (lowest slot first, so batches stay dense)."""
        admitted = []
        with self._lock:
            for slot, holder in enumerate(self.slots):
                if not self._waiting:
                    break
                if holder is None:
                    item = self._waiting.popleft()
                    self.slots[slot] = item
                    admitted.append(Admission(slot, item))
        return admitted

    def release(self, slot: int) -> None:
        self.slots[slot] = None

    def active(self) -> list[int]:
        return [i for i, holder in enumerate(self.slots) if holder is not None]
