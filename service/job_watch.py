"""`JobWatch`: the jobs of every open event stream of this gateway process, read by one poller.

A stream subscribes to its job and gets a `Watcher`; one asyncio task reads every watched job
from the job store each `EVENTS_POLL_INTERVAL_SECONDS`, in one thread-pool call
(`BaseJobStore.snapshots`: one Redis round trip for all of them), and wakes the watchers whose
job changed. A stream therefore costs a socket, a coroutine and a small object: no thread, and
the job store sees one read per interval however many streams are open. The poller runs only
while something is watched.

Every state a watcher sees comes from the poller, whose reads are sequential, so a stream never
shows a job going back to an older state. A new watcher is served by the next poll, which it
starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.concurrency import run_in_threadpool

from musicedit.errors import MusiceditError
from musicedit.job_store import BaseJobStore
from musicedit.jobs import EditJob
from musicedit.logs import log_event

log = logging.getLogger("musicedit.service")

# A job and its queue position (None unless queued), as one poll read them.
Snapshot = tuple[EditJob, int | None]


class Watcher:
    """One stream's view of its job: `latest` is the newest snapshot (None once the job is
    gone), `changed` is set whenever the poller replaces it."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.latest: Snapshot | None = None
        self.served = False  # the poller has given it a first snapshot (or found no job)
        self.changed = asyncio.Event()

    def offer(self, snapshot: Snapshot | None) -> None:
        self.latest = snapshot
        self.served = True
        self.changed.set()


class JobWatch:
    """The watched jobs of one gateway process and the poller that reads them."""

    def __init__(self, store: BaseJobStore, interval_seconds: float) -> None:
        self.store = store
        self.interval_seconds = interval_seconds
        self._watchers: dict[str, set[Watcher]] = {}
        self._last: dict[str, Snapshot] = {}
        self._wake: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        """Open watchers (one per stream)."""
        return sum(len(watchers) for watchers in self._watchers.values())

    def subscribe(self, job_id: str) -> Watcher:
        """Watch `job_id`; the next poll, started now, gives the watcher its first snapshot."""
        watcher = Watcher(job_id)
        self._watchers.setdefault(job_id, set()).add(watcher)
        if self._task is None:  # (its event is made here: bound to the running loop)
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._poll(), name="job-watch")
        self._wake.set()
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        watchers = self._watchers.get(watcher.job_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.job_id]
            self._last.pop(watcher.job_id, None)

    async def close(self) -> None:
        """Stop the poller (at gateway shutdown)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        try:
            while self._watchers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_seconds)
                self._wake.clear()
                ids = list(self._watchers)
                try:
                    found = await run_in_threadpool(self.store.snapshots, ids)
                except MusiceditError as exc:  # the streams keep their heartbeats meanwhile
                    log_event(log, "job_watch_poll_failed", logging.WARNING, error=exc.message,
                              jobs=len(ids))
                    continue
                self._deliver(ids, found)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _deliver(self, ids: list[str], found: dict[str, Snapshot]) -> None:
        for job_id in ids:
            watchers = self._watchers.get(job_id)
            if not watchers:  # its streams closed during the read
                continue
            snapshot = found.get(job_id)
            changed = snapshot is None or self._last.get(job_id) != snapshot
            if snapshot is not None:
                self._last[job_id] = snapshot
            for watcher in list(watchers):
                if changed or not watcher.served:
                    watcher.offer(snapshot)
