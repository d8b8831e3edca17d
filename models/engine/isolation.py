"""Run a batched computation; if it raises, narrow the failure down to the items it is due to.

The engine batches the work of many jobs (condition paths, prompt prefills, decode steps). An
exception raised for one job's data must fail that job alone, and a fault only the whole batch
hits (memory) must fail none: the batch is re-run on halves, recursively, down to single
items. A sticky device error is never narrowed down (every re-run would fail the same way):
it is raised as it is.
"""
from __future__ import annotations

import typing as tp

from .errors import is_fatal_device_error

T = tp.TypeVar("T")
R = tp.TypeVar("R")


def run_narrowing(items: tp.Sequence[T], run: tp.Callable[[list[T]], R],
                  fail: tp.Callable[[T, Exception], None],
                  first_error: Exception | None = None) -> list[tuple[list[T], R]]:
    """Run `run(items)`; on an exception, run halves of the items until single items.

    Args:
        items: the batch (jobs, slots...).
        run: computes a part of the batch; must be re-runnable on any part from the same
            state (its only side effects are writes the re-run repeats).
        fail: called once for each item whose run raised even alone, with that exception.
        first_error: the exception `run(items)` already raised (the caller ran the whole
            batch its own, faster way); the whole batch is then not run again.
    Returns:
        The parts that ran, in `items`' order, each with its result.
    Raises:
        Exception: a sticky device error (`is_fatal_device_error`), unchanged.
    """
    done: list[tuple[list[T], R]] = []

    def attempt(part: list[T], known_error: Exception | None) -> None:
        error = known_error
        if error is None:
            try:
                done.append((part, run(part)))
                return
            except Exception as exc:  # noqa: BLE001 - any fault is narrowed down
                error = exc
        if is_fatal_device_error(error):
            raise error
        if len(part) == 1:
            if known_error is not None:  # a lone item is tried once more on its own
                attempt(part, None)
                return
            fail(part[0], error)
            return
        half = len(part) // 2
        attempt(part[:half], None)
        attempt(part[half:], None)

    if items:
        attempt(list(items), first_error)
    return done
