"""The scheduler decides which job windows take the engine's free slots at each step boundary.

Continuous batching: a window joins at any step boundary where a slot is free and leaves as
soon as it finishes, without waiting for the others. The number of slots is fixed when the
engine starts, from the maximum batch size and the memory budget.
"""
from __future__ import annotations

import threading
import typing as tp
from collections import deque

from .kv_cache import SlotGeometry

T = tp.TypeVar("T")


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


class Scheduler(tp.Generic[T]):
    """FIFO admission of work items; thread-safe submission.

    Items continuing a job that already holds engine work (its next window) go to the front:
    finishing admitted jobs first keeps latency bounded under load.
    """

    def __init__(self) -> None:
        self._waiting: deque[T] = deque()
        self._lock = threading.Lock()
        self.wakeup = threading.Event()

    def submit(self, item: T, front: bool = False) -> None:
        with self._lock:
            if front:
                self._waiting.appendleft(item)
            else:
                self._waiting.append(item)
        self.wakeup.set()

    def take(self, limit: int) -> list[T]:
        """Up to `limit` waiting items, oldest (or continuing) first."""
        with self._lock:
            return [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]

    def remove_waiting(self, predicate: tp.Callable[[T], bool]) -> list[T]:
        """Take waiting items matching `predicate` out of the queue (cancellation)."""
        with self._lock:
            removed = [item for item in self._waiting if predicate(item)]
            self._waiting = deque(item for item in self._waiting if not predicate(item))
        return removed

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)
