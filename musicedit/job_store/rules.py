"""The job-state rules: every transition of a job, written once over `_mutate(transition)`.

Celery messages only wake workers up; whether a worker may run a job is decided here with a
compare-and-set (`claim`). Every state change is one atomic read-modify-write of one job
record: a backend supplies only that atomicity (`_mutate`, `_insert`, `_count_submission`)
and derives its indexes (FIFO queue, running leases, finished-at, per-owner lists, dead
letters) from the new record in the same transaction, so indexes never disagree with jobs.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from musicedit.errors import (
    IdempotencyConflict,
    JobNotCancelable,
    JobNotFound,
    LeaseLost,
    RateLimited,
    TooManyQueuedJobs,
)
from musicedit.jobs import EditJob, JobState, Lease, ResultAudio

T = TypeVar("T")
Clock = Callable[[], float]
# A transition gets the current record (None if absent) and returns (record to write or None
# for "no change", value for the caller).
Transition = Callable[[EditJob | None], tuple[EditJob | None, T]]

RETRY_AFTER_QUEUE_FULL = 10
RATE_WINDOW_SECONDS = 60


class CreatedJob(NamedTuple):
    """The stored job, whether this call created it, and its queue position (None unless
    queued), all read in the transaction that wrote it."""

    job: EditJob
    created: bool
    queue_position: int | None


class ClaimResult(NamedTuple):
    """What a claim did: `job` is set when the caller must run it; `finished` when the claim
    itself ended the job (dead-lettered after too many abandoned attempts, or canceled)."""

    job: EditJob | None
    finished: EditJob | None



class BaseJobStore(ABC):
    """Transition rules shared by both backends; subclasses provide atomic primitives."""

    def __init__(self, *, retention_seconds: float, max_attempts: int, clock: Clock = time.time,
                 dead_letter_retention_seconds: float | None = None):
        self.retention_seconds = retention_seconds
        # dead letters are kept for the operator, longer than other jobs by default
        self.dead_letter_retention_seconds = (
            retention_seconds if dead_letter_retention_seconds is None
            else dead_letter_retention_seconds)
        self.max_attempts = max_attempts
        self.clock = clock

    # --- backend primitives --------------------------------------------------------------
    @abstractmethod
    def _mutate(self, job_id: str, transition: Transition[T]) -> T:
        """Atomically read job `job_id`, apply `transition`, write the new record + indexes."""

    @abstractmethod
    def _insert(self, job: EditJob, max_queued_per_owner: int | None) -> CreatedJob:
        """Atomically: resolve idempotency, check the owner's queued cap, assign seq, write,
        and read the queue position of the job returned."""

    @abstractmethod
    def _count_submission(
        self, owner: str, idempotency_key: str | None, limit: int,
    ) -> tuple[float, int, bool]:
        """Record one submission in the owner's rate log (the retries' log when the owner
        already used `idempotency_key`) unless the last `RATE_WINDOW_SECONDS` already hold
        `limit`; return (seconds until the log's oldest entry leaves the window when it is
        full, else 0; the owner's queued jobs; whether the request is a retry)."""

    @abstractmethod
    def _idempotency_record(self, owner: str, idempotency_key: str) -> tuple[str, str] | None:
        """(request_hash, job_id) stored for this owner's key, if any."""

    @abstractmethod
    def _load(self, job_id: str) -> EditJob | None: ...

    # --- backend reads and housekeeping (no transition rules in them) ---------------------
    @abstractmethod
    def list_jobs(self, owner: str, limit: int = 20, before: int | None = None) -> list[EditJob]:
        """The owner's jobs, newest first; pass the last job's `seq` as `before` for more."""

    @abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one (0 = next); None if not queued."""

    @abstractmethod
    def count_queued(self, owner: str | None = None) -> int:
        """Queued jobs, of one owner or of all."""

    @abstractmethod
    def count_by_state(self) -> dict[JobState, int]:
        """Jobs queued and running now (finished ones are counted when they finish)."""

    @abstractmethod
    def discard(self, job_id: str) -> None:
        """Delete a job that was never announced to workers (its enqueue failed)."""

    @abstractmethod
    def expired_leases(self) -> list[str]:
        """Ids of running jobs whose lease has expired (for the reaper)."""

    @abstractmethod
    def oldest_queued(self, limit: int = 20) -> list[EditJob]:
        """The first `limit` queued jobs, oldest first (for re-sending lost wake-ups)."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[EditJob]:
        """Dead letters, most recently failed first."""

    @abstractmethod
    def expired_jobs(self, limit: int = 1000) -> list[EditJob]:
        """Up to `limit` jobs finished more than `retention_seconds` ago (dead letters:
        `dead_letter_retention_seconds`), oldest first. They stay stored until
        `remove_expired`: the caller deletes their objects first."""

    @abstractmethod
    def remove_expired(self, job_id: str) -> None:
        """Delete a finished job's record (its objects are gone already)."""

    @abstractmethod
    def register_worker_heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that `worker_id` is alive, with what it reports about itself."""

    @abstractmethod
    def live_workers(self, ttl_seconds: float) -> list[dict[str, Any]]:
        """What the workers that heartbeated in the last `ttl_seconds` reported."""

    @abstractmethod
    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    # --- gateway side ----------------------------------------------------------------
    def admit(
        self, owner: str, limit_per_minute: int, max_queued: int,
        idempotency_key: str | None = None,
    ) -> bool:
        """Before an upload is read: count it against the owner's rate limit (`RateLimited`:
        at most `limit_per_minute` admitted submissions in any 60 s, a sliding window, so no
        burst of twice the limit across a minute boundary; refused requests are not counted,
        and `Retry-After` is when the oldest one in the window leaves it), then check the
        owner's queued-jobs cap (`TooManyQueuedJobs`).

        A request whose `idempotency_key` the owner already used is a retry: its answer is the
        earlier job (or `IdempotencyConflict` for another body, once the body is read), so the
        queued cap, which that job may fill, does not apply, and it counts in a rate window of
        its own (a log of its own) with the same limit: a retry of the submission that used
        the minute's last slot still gets its job, and retries (each still an upload to read
        and hash) cannot exceed the limit either. The result says whether it is a retry. One
        round trip; `create` checks the cap again atomically when it writes the job.
        """
        wait, queued, retry = self._count_submission(owner, idempotency_key, limit_per_minute)
        if wait > 0:
            raise _rate_limited(limit_per_minute, wait)
        if retry:
            return True
        if queued >= max_queued:
            raise queue_full(queued, max_queued)
        return False

    def create(
        self, job: EditJob, *, max_queued_per_owner: int | None = None
    ) -> tuple[EditJob, bool]:
        """Store a new queued job.

        With `job.idempotency_key`, the same key and `request_hash` return the existing job.

        Returns:
            (the stored job, whether this call created it).

        Raises:
            IdempotencyConflict: the key was used with another `request_hash`.
            TooManyQueuedJobs: the owner already has `max_queued_per_owner` queued jobs.
        """
        stored = self.create_with_position(job, max_queued_per_owner=max_queued_per_owner)
        return stored.job, stored.created

    def create_with_position(
        self, job: EditJob, *, max_queued_per_owner: int | None = None
    ) -> CreatedJob:
        """`create`, plus the returned job's queue position from the same transaction (on
        Redis: one round trip for the whole submission record)."""
        job = job.model_copy(update={"state": JobState.queued, "attempts": 0, "lease": None})
        return self._insert(job, max_queued_per_owner)

    def find_idempotent(
        self, owner: str, idempotency_key: str, request_hash: str
    ) -> EditJob | None:
        """The job made earlier with this key and body, None if the key is unused.

        Raises:
            IdempotencyConflict: the key was used with a different body.
        """
        record = self._idempotency_record(owner, idempotency_key)
        if record is None:
            return None
        stored_hash, job_id = record
        check_idempotency(stored_hash, request_hash, idempotency_key)
        return self._load(job_id)

    def get(self, job_id: str, owner: str | None = None) -> EditJob:
        """The job, if it exists and (when `owner` is given) belongs to `owner`."""
        job = self._load(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"No edit job {job_id!r} for this API key; check the id.")
        return job

    def snapshots(self, job_ids: list[str]) -> dict[str, tuple[EditJob, int | None]]:
        """The jobs among `job_ids` that exist, each with its queue position (None unless
        queued): what the gateway's event streams watch. Backends may batch the reads."""
        found: dict[str, tuple[EditJob, int | None]] = {}
        for job_id in job_ids:
            job = self._load(job_id)
            if job is not None:
                queued = job.state is JobState.queued
                found[job_id] = (job, self.queue_position(job_id) if queued else None)
        return found

    def request_cancel(self, job_id: str, owner: str | None = None) -> EditJob:
        """Cancel a queued job now, or flag a running one for its worker to stop."""

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._owned(job, job_id, owner)
            if job.state is JobState.queued:
                canceled = self._finish(job, JobState.canceled)
                return canceled, canceled
            if job.state is JobState.running:
                if job.cancel_requested:
                    return None, job
                new = job.model_copy(update={"cancel_requested": True})
                return new, new
            raise JobNotCancelable(
                f"Job {job_id} already {job.state.value}; only queued or running jobs can be "
                "canceled."
            )

        return self._mutate(job_id, transition)

    # --- worker side ----------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, lease_seconds: float) -> EditJob | None:
        """Take the job for `worker_id` (compare-and-set); None means "do not run it".

        queued -> running (attempts 1); running with an expired lease -> running for this
        worker (attempts + 1), or failed and dead-lettered once `max_attempts` is used up, or
        canceled if a cancel was requested. Terminal, missing or live-leased jobs: None.
        """
        return self.claim_or_finish(job_id, worker_id, lease_seconds).job

    def claim_or_finish(self, job_id: str, worker_id: str, lease_seconds: float) -> ClaimResult:
        """`claim`, also telling the caller when this very call finished the job (an
        abandoned job dead-lettered after `max_attempts`, or one canceled while abandoned):
        exactly one caller sees that, so exactly one webhook and metric count follow."""
        now = self.clock()

        def transition(job: EditJob | None) -> tuple[EditJob | None, ClaimResult]:
            if job is None or job.state.terminal:
                return None, ClaimResult(None, None)
            if job.state is JobState.running:
                assert job.lease is not None
                if job.lease.expires_at > now:
                    return None, ClaimResult(None, None)
                if job.cancel_requested:
                    canceled = self._finish(job, JobState.canceled)
                    return canceled, ClaimResult(None, canceled)
                if job.attempts >= self.max_attempts:
                    failed = self._finish(
                        job,
                        JobState.failed,
                        error=f"The job was abandoned by {job.attempts} workers (crash or "
                        "kill) and was not retried again; resubmit it or contact the operator.",
                        dead_lettered=True,
                    )
                    return failed, ClaimResult(None, failed)
            started = job.timings.started_at or now
            running = job.model_copy(
                update={
                    "state": JobState.running,
                    "attempts": job.attempts + 1,
                    "lease": Lease(worker_id=worker_id, expires_at=now + lease_seconds),
                    "timings": job.timings.model_copy(update={"started_at": started}),
                }
            )
            return running, ClaimResult(running, None)

        return self._mutate(job_id, transition)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> EditJob:
        """Extend the lease; the returned job tells the worker if a cancel was requested."""
        now = self.clock()
        return self._holder_update(
            job_id,
            worker_id,
            lambda job: {"lease": Lease(worker_id=worker_id, expires_at=now + lease_seconds)},
        )

    def update_progress(
        self, job_id: str, worker_id: str, frames_done: int, frames_total: int
    ) -> EditJob:
        return self._holder_update(
            job_id,
            worker_id,
            lambda job: {
                "progress": job.progress.model_copy(
                    update={"frames_done": frames_done, "frames_total": frames_total}
                )
            },
        )

    def complete(self, job_id: str, worker_id: str, result_key: str,
                 result: ResultAudio | None = None) -> EditJob:
        """Record the one result of the job (the audio's key and what it holds). Only the lease
        holder may do this, once.

        If a cancel was requested meanwhile the job becomes `canceled` and `result_key` is not
        recorded (check `.state`; the worker should delete the object).

        Raises:
            LeaseLost: `worker_id` does not hold the job.
        """

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._held(job, job_id, worker_id)
            if job.cancel_requested:
                canceled = self._finish(job, JobState.canceled)
                return canceled, canceled
            progress = job.progress.model_copy(update={"frames_done": job.progress.frames_total})
            done = self._finish(job, JobState.succeeded, result_key=result_key, result=result,
                                progress=progress)
            return done, done

        return self._mutate(job_id, transition)

    def fail(
        self, job_id: str, worker_id: str, error: str, dead_letter: bool = False
    ) -> EditJob:
        """Fail the job (only the lease holder); `dead_letter` keeps it in the dead-letter list."""

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._held(job, job_id, worker_id)
            failed = self._finish(job, JobState.failed, error=error, dead_lettered=dead_letter)
            return failed, failed

        return self._mutate(job_id, transition)

    def release(self, job_id: str, worker_id: str) -> EditJob:
        """Hand a running job back to the queue (graceful shutdown); the attempt is not counted.

        The job keeps its place at the head of the FIFO; the caller re-enqueues a message.
        """

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._held(job, job_id, worker_id)
            if job.cancel_requested:
                canceled = self._finish(job, JobState.canceled)
                return canceled, canceled
            queued = job.model_copy(
                update={
                    "state": JobState.queued,
                    "lease": None,
                    "attempts": max(0, job.attempts - 1),
                }
            )
            return queued, queued

        return self._mutate(job_id, transition)

    def acknowledge_cancel(self, job_id: str, worker_id: str) -> EditJob:
        """The worker stopped a job whose cancel was requested: mark it canceled."""

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._held(job, job_id, worker_id)
            canceled = self._finish(job, JobState.canceled)
            return canceled, canceled

        return self._mutate(job_id, transition)

    # --- operator side ----------------------------------------------------------------
    def requeue_dead_letter(self, job_id: str) -> EditJob:
        """Put a dead letter back in the queue as a fresh job (attempts 0, no error), once
        the operator has fixed what killed it; the caller sends its wake-up message. It keeps
        its id, owner, input and place in the FIFO, and its webhook fires again when it ends.

        Raises:
            JobNotFound: the job is not a dead letter.
        """

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            if job is None or not job.dead_lettered:
                raise JobNotFound(f"No dead letter {job_id!r}; list them with "
                                  "`musicedit dead-letters list`.")
            queued = job.model_copy(update={
                "state": JobState.queued, "attempts": 0, "error": None, "dead_lettered": False,
                "lease": None, "result_key": None, "cancel_requested": False,
                "progress": job.progress.model_copy(update={"frames_done": 0}),
                "timings": job.timings.model_copy(update={"started_at": None,
                                                          "finished_at": None}),
            })
            return queued, queued

        return self._mutate(job_id, transition)

    # --- helpers ----------------------------------------------------------------------
    def _holder_update(
        self, job_id: str, worker_id: str, changes: Callable[[EditJob], dict[str, Any]]
    ) -> EditJob:
        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._held(job, job_id, worker_id)
            new = job.model_copy(update=changes(job))
            return new, new

        return self._mutate(job_id, transition)

    @staticmethod
    def _owned(job: EditJob | None, job_id: str, owner: str | None) -> EditJob:
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"No edit job {job_id!r} for this API key; check the id.")
        return job

    @staticmethod
    def _held(job: EditJob | None, job_id: str, worker_id: str) -> EditJob:
        if (
            job is None
            or job.state is not JobState.running
            or job.lease is None
            or job.lease.worker_id != worker_id
        ):
            state = "missing" if job is None else job.state.value
            raise LeaseLost(f"Worker {worker_id} does not hold job {job_id} (job is {state}).")
        return job

    def _finish(self, job: EditJob, state: JobState, **changes: Any) -> EditJob:
        timings = job.timings.model_copy(update={"finished_at": self.clock()})
        return job.model_copy(update={"state": state, "lease": None, "timings": timings, **changes})


def _rate_limited(limit_per_minute: int, wait: float) -> RateLimited:
    return RateLimited(
        f"This API key sent more than {limit_per_minute} submissions in the last minute; "
        "wait for the indicated delay.",
        math.ceil(wait),
    )


def queue_full(queued: int, max_queued: int) -> TooManyQueuedJobs:
    return TooManyQueuedJobs(
        f"This API key already has {queued} queued jobs (limit {max_queued}); wait for some "
        "to start or cancel some.",
        RETRY_AFTER_QUEUE_FULL,
    )


def check_idempotency(stored_hash: str, request_hash: str | None, key: str) -> None:
    if stored_hash != request_hash:
        raise idempotency_conflict(key)


def idempotency_conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"Idempotency-Key {key!r} was already used with a different request; use a new "
        "key for a different request, or resend the identical request."
    )

