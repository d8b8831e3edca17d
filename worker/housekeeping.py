"""Background duties of every worker: lease reaper, heartbeat, retention sweep, shutdown state.

None of these decode anything; they keep the job store honest while task threads run jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from musicedit.errors import MusiceditError
from musicedit.job_store import BaseJobStore
from musicedit.logs import log_event
from musicedit.queue import queue_for

log = logging.getLogger("musicedit.worker")


class PeriodicThread:
    """Calls `action()` every `interval` seconds in a daemon thread until `stop()`.

    Errors are logged and the loop goes on: a Redis or S3 outage must not kill the reaper.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.action = action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PeriodicThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.action()
            except Exception as exc:
                log_event(log, "housekeeping_failed", logging.WARNING, task=self.name,
                          error=f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class LeaseReaper:
    """Re-enqueues jobs whose worker stopped renewing its lease (killed, hung, partitioned).

    The job store decides who may run them (`claim` takes over an expired lease, or dead-letters
    the job after `max_attempts`), so a duplicate wake-up is harmless; a job re-enqueued less
    than `lease_seconds` ago is skipped only to avoid flooding the queue while it waits.
    """

    def __init__(
        self,
        store: BaseJobStore,
        requeue: Callable[[str], None],
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        queue_depth: Callable[[str], int] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.requeue = requeue
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.queue_depth = queue_depth
        self.wall_clock = wall_clock
        self._recent: dict[str, float] = {}

    def run_once(self) -> list[str]:
        """Re-enqueue every job with an expired lease; returns their ids."""
        now = self.clock()
        self._recent = {j: t for j, t in self._recent.items() if now - t < self.lease_seconds}
        requeued: list[str] = []
        for job_id in self.store.expired_leases():
            if job_id in self._recent:
                continue
            self.requeue(job_id)
            self._recent[job_id] = now
            requeued.append(job_id)
            log_event(log, "lease_expired_requeued", logging.WARNING, job_id=job_id)
        requeued += self._resend_lost_wakeups(now)
        return requeued

    def _resend_lost_wakeups(self, now: float) -> list[str]:
        """Re-send wake-ups of queued jobs whose broker queue is empty.

        A broker outage can lose a message the store's job still waits for (delivered to a
        worker that lost its connection before claiming, or dropped between fetch and
        bookkeeping). With its queue empty (`musicedit.queue.queue_for`: the edit or the
        separation queue), a job still queued for longer than a lease has no message left to
        wake it (or one a worker is about to claim: a duplicate is harmless).
        """
        if self.queue_depth is None:
            return []
        depths: dict[str, int] = {}
        resent = []
        for job in self.store.oldest_queued():
            age = self.wall_clock() - job.timings.created_at
            if age < self.lease_seconds or job.id in self._recent:
                continue
            queue = queue_for(job.instruction)
            if queue not in depths:
                try:
                    depths[queue] = self.queue_depth(queue)
                except MusiceditError:
                    depths[queue] = -1  # unknown: leave it for the next run
            if depths[queue] != 0:
                continue
            self.requeue(job.id)
            self._recent[job.id] = now
            resent.append(job.id)
            log_event(log, "lost_wakeup_resent", logging.WARNING, job_id=job.id,
                      queued_seconds=round(age, 1))
        return resent


class ShutdownSignal:
    """Set when the worker was asked to stop; running jobs get `grace_seconds` to finish."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._deadline: float | None = None
        self._lock = threading.Lock()

    def begin(self, grace_seconds: float) -> None:
        with self._lock:
            if self._deadline is None:
                self._deadline = self.clock() + grace_seconds
                log_event(log, "worker_shutting_down", grace_seconds=grace_seconds)

    @property
    def requested(self) -> bool:
        return self._deadline is not None

    def grace_expired(self) -> bool:
        """True once the grace period is over: jobs still running are handed back."""
        deadline = self._deadline
        return deadline is not None and self.clock() >= deadline
