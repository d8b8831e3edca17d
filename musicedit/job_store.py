"""The job store: the single source of truth for job state, leases and per-key counters.

Celery messages only wake workers up; whether a worker may run a job is decided here with a
compare-and-set (`claim`). Every state change is one atomic read-modify-write of one job
record, and every index (FIFO queue, running leases, finished-at, per-owner lists, dead
letters) is derived from the new record in the same transaction, so indexes never disagree
with jobs.

Two backends share the transition rules below:
- `RedisJobStore` (production): WATCH/MULTI optimistic transactions; the two calls of every
  submission (`admit`, `create_with_position`) are one round trip each (a pipeline, a Lua
  script).
- `SqliteJobStore` (embedded default): `BEGIN IMMEDIATE` transactions on one file, safe across
  the gateway and worker processes of one machine.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import redis

from musicedit.errors import (
    RETRY_AFTER_UNAVAILABLE,
    IdempotencyConflict,
    JobNotCancelable,
    JobNotFound,
    LeaseLost,
    RateLimited,
    StoreUnavailable,
    TooManyQueuedJobs,
)
from musicedit.jobs import EditJob, JobState, Lease
from musicedit.settings import Settings

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


class JobStore(Protocol):
    """What the gateway and the worker may do with jobs."""

    # gateway side
    def admit(self, owner: str, limit_per_minute: int, max_queued: int,
              idempotency_key: str | None = None) -> bool: ...
    def create(self, job: EditJob, *, max_queued_per_owner: int | None = None) -> tuple[EditJob, bool]: ...
    def create_with_position(self, job: EditJob, *, max_queued_per_owner: int | None = None) -> CreatedJob: ...
    def find_idempotent(self, owner: str, idempotency_key: str, request_hash: str) -> EditJob | None: ...
    def get(self, job_id: str, owner: str | None = None) -> EditJob: ...
    def list_jobs(self, owner: str, limit: int = 20, before: int | None = None) -> list[EditJob]: ...
    def queue_position(self, job_id: str) -> int | None: ...
    def count_queued(self, owner: str | None = None) -> int: ...
    def count_by_state(self) -> dict[JobState, int]: ...
    def request_cancel(self, job_id: str, owner: str | None = None) -> EditJob: ...
    def discard(self, job_id: str) -> None: ...
    def expired_jobs(self, limit: int = 1000) -> list[EditJob]: ...
    def remove_expired(self, job_id: str) -> None: ...
    def live_workers(self, ttl_seconds: float) -> list[dict[str, Any]]: ...
    def ping(self) -> None: ...
    # worker side
    def claim(self, job_id: str, worker_id: str, lease_seconds: float) -> EditJob | None: ...
    def claim_or_finish(self, job_id: str, worker_id: str, lease_seconds: float) -> ClaimResult: ...
    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> EditJob: ...
    def update_progress(self, job_id: str, worker_id: str, frames_done: int, frames_total: int) -> EditJob: ...
    def complete(self, job_id: str, worker_id: str, result_key: str) -> EditJob: ...
    def fail(self, job_id: str, worker_id: str, error: str, dead_letter: bool = False) -> EditJob: ...
    def release(self, job_id: str, worker_id: str) -> EditJob: ...
    def acknowledge_cancel(self, job_id: str, worker_id: str) -> EditJob: ...
    def expired_leases(self) -> list[str]: ...
    def oldest_queued(self, limit: int = 20) -> list[EditJob]: ...
    def dead_letters(self, limit: int = 100) -> list[EditJob]: ...
    def requeue_dead_letter(self, job_id: str) -> EditJob: ...
    def register_worker_heartbeat(self, worker_id: str, info: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


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
        its own (a log of its own) with the same limit: a retry of the submission that used the minute's last
        slot still gets its job, and retries (each still an upload to read and hash) cannot
        exceed the limit either. The result says whether it is a retry. One round trip;
        `create` checks the cap again atomically when it writes the job.
        """
        wait, queued, retry = self._count_submission(owner, idempotency_key, limit_per_minute)
        if wait > 0:
            raise _rate_limited(limit_per_minute, wait)
        if retry:
            return True
        if queued >= max_queued:
            raise _queue_full(queued, max_queued)
        return False

    def create(
        self, job: EditJob, *, max_queued_per_owner: int | None = None
    ) -> tuple[EditJob, bool]:
        """Store a new queued job. Returns (job, created).

        With `job.idempotency_key`: the same key and `request_hash` return the existing job
        (created=False); the same key with another hash raises `IdempotencyConflict`.
        Raises `TooManyQueuedJobs` when the owner already has `max_queued_per_owner` queued.
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

        Raises `IdempotencyConflict` if the key was used with a different body.
        """
        record = self._idempotency_record(owner, idempotency_key)
        if record is None:
            return None
        stored_hash, job_id = record
        _check_idempotency(stored_hash, request_hash, idempotency_key)
        return self._load(job_id)

    def get(self, job_id: str, owner: str | None = None) -> EditJob:
        """The job, if it exists and (when `owner` is given) belongs to `owner`."""
        job = self._load(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"No edit job {job_id!r} for this API key; check the id.")
        return job

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

    def claim_or_finish(self, job_id: str, worker_id: str, lease_seconds: float) -> "ClaimResult":
        """:meth:`claim`, also telling the caller when this very call finished the job (an
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

    def complete(self, job_id: str, worker_id: str, result_key: str) -> EditJob:
        """Record the one result of the job. Only the lease holder may do this, once.

        If a cancel was requested meanwhile the job becomes `canceled` and `result_key` is not
        recorded (check `.state`; the worker should delete the object). Raises `LeaseLost`
        when `worker_id` does not hold the job.
        """

        def transition(job: EditJob | None) -> tuple[EditJob | None, EditJob]:
            job = self._held(job, job_id, worker_id)
            if job.cancel_requested:
                canceled = self._finish(job, JobState.canceled)
                return canceled, canceled
            progress = job.progress.model_copy(update={"frames_done": job.progress.frames_total})
            done = self._finish(job, JobState.succeeded, result_key=result_key, progress=progress)
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
        Raises `JobNotFound` unless the job is a dead letter."""

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


def _queue_full(queued: int, max_queued: int) -> TooManyQueuedJobs:
    return TooManyQueuedJobs(
        f"This API key already has {queued} queued jobs (limit {max_queued}); wait for some "
        "to start or cancel some.",
        RETRY_AFTER_QUEUE_FULL,
    )


def _check_idempotency(stored_hash: str, request_hash: str | None, key: str) -> None:
    if stored_hash != request_hash:
        raise _idempotency_conflict(key)


def _idempotency_conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"Idempotency-Key {key!r} was already used with a different request; use a new "
        "key for a different request, or resend the identical request."
    )


# =========================================================================================
# Redis
# =========================================================================================


def _redis_errors(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                "The job store (Redis) is unreachable; retry after the indicated delay.",
                RETRY_AFTER_UNAVAILABLE,
            ) from exc

    return wrapper


_SEQ_TAIL = '"seq":0}'

# `_insert` in one round trip: idempotency record, queued cap, seq, the record and the indexes
# `RedisJobStore._write` derives for a queued job, and the queue position of the job returned.
# KEYS: seq counter, queued zset, owner's queued set, owner's jobs zset, job, [idempotency].
# ARGV: job id, record JSON without its seq value and closing brace, queued cap (-1 = none),
#       request hash, idempotency record, its TTL in seconds, job key prefix.
_INSERT_SCRIPT = """
local job_id = ARGV[1]
if KEYS[6] then
  local record = redis.call('GET', KEYS[6])
  if record then
    local stored = cjson.decode(record)
    local stored_hash = stored[1]
    if stored_hash == cjson.null then stored_hash = '' end
    if stored_hash ~= ARGV[4] then return {'conflict'} end
    local existing = redis.call('GET', ARGV[7] .. stored[2])
    if existing then
      return {'existing', existing, redis.call('ZRANK', KEYS[2], stored[2]) or -1}
    end
  end
end
local cap = tonumber(ARGV[3])
if cap >= 0 then
  local queued = redis.call('SCARD', KEYS[3])
  if queued >= cap then return {'full', queued} end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[5], ARGV[2] .. seq .. '}')
redis.call('ZADD', KEYS[4], seq, job_id)
redis.call('ZADD', KEYS[2], seq, job_id)
redis.call('SADD', KEYS[3], job_id)
if KEYS[6] then redis.call('SET', KEYS[6], ARGV[5], 'EX', ARGV[6]) end
return {'created', seq, redis.call('ZRANK', KEYS[2], job_id)}
"""


# `_count_submission` in one round trip. KEYS: the owner's rate log (a sorted set of
# admission times), the owner's queued set, the owner's retries' rate log, [the idempotency
# record]. ARGV: now, the window in seconds, the limit, a unique member for this submission.
# The wait is returned as a string: Redis truncates Lua numbers to integers.
_ADMIT_SCRIPT = """
local retry = 0
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then retry = 1 end
local log = KEYS[1 + 2 * retry]
local now = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - span)
local wait = 0
if redis.call('ZCARD', log) >= tonumber(ARGV[3]) then
    local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    wait = tonumber(oldest[2]) + span - now
else
    redis.call('ZADD', log, now, ARGV[4])
    redis.call('EXPIRE', log, math.ceil(span) + 1)
end
return {tostring(wait), redis.call('SCARD', KEYS[2]), retry}
"""


class RedisJobStore(BaseJobStore):
    """Jobs as JSON strings; indexes as sorted sets, all under `prefix`."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_seconds: float,
        max_attempts: int,
        clock: Clock = time.time,
        prefix: str = "musicedit:",
        dead_letter_retention_seconds: float | None = None,
    ) -> None:
        super().__init__(retention_seconds=retention_seconds, max_attempts=max_attempts, clock=clock,
                         dead_letter_retention_seconds=dead_letter_retention_seconds)
        self.redis = client
        self.p = prefix
        self._insert_script = client.register_script(_INSERT_SCRIPT)
        self._admit_script = client.register_script(_ADMIT_SCRIPT)

    @classmethod
    def from_url(cls, url: str, settings: Settings, clock: Clock = time.time) -> "RedisJobStore":
        client = redis.Redis.from_url(
            url,
            socket_timeout=settings.redis_socket_timeout_seconds,
            socket_connect_timeout=settings.redis_socket_timeout_seconds,
            health_check_interval=30,
        )
        return cls(
            client,
            retention_seconds=settings.job_retention_seconds,
            dead_letter_retention_seconds=settings.dead_letter_retention_seconds,
            max_attempts=settings.max_attempts,
            clock=clock,
        )

    # keys
    def _job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def _owner_jobs(self, owner: str) -> str:
        return f"{self.p}owner:{owner}:jobs"

    def _owner_queued(self, owner: str) -> str:
        return f"{self.p}owner:{owner}:queued"

    def _idem(self, owner: str, key: str) -> str:
        return f"{self.p}idem:{owner}:{key}"

    @property
    def _queued(self) -> str:
        return f"{self.p}queued"

    @property
    def _running(self) -> str:
        return f"{self.p}running"

    @property
    def _finished(self) -> str:
        return f"{self.p}finished"

    @property
    def _dead(self) -> str:
        return f"{self.p}deadletter"

    @property
    def _workers(self) -> str:
        return f"{self.p}workers"

    def _write(self, pipe: Any, job: EditJob) -> None:
        """Write the record and derive every index from it (inside MULTI)."""
        pipe.set(self._job(job.id), job.model_dump_json())
        pipe.zadd(self._owner_jobs(job.owner), {job.id: job.seq})
        if job.state is JobState.queued:
            pipe.zadd(self._queued, {job.id: job.seq})
            pipe.sadd(self._owner_queued(job.owner), job.id)
        else:
            pipe.zrem(self._queued, job.id)
            pipe.srem(self._owner_queued(job.owner), job.id)
        if job.state is JobState.running and job.lease is not None:
            pipe.zadd(self._running, {job.id: job.lease.expires_at})
        else:
            pipe.zrem(self._running, job.id)
        # a finished job is in one of two retention indexes: dead letters are kept longer
        # (a requeued dead letter leaves both)
        if job.dead_lettered:
            pipe.zadd(self._dead, {job.id: job.timings.finished_at or self.clock()})
            pipe.zrem(self._finished, job.id)
        else:
            pipe.zrem(self._dead, job.id)
            if job.state.terminal:
                pipe.zadd(self._finished, {job.id: job.timings.finished_at or self.clock()})
            else:
                pipe.zrem(self._finished, job.id)

    @_redis_errors
    def _mutate(self, job_id: str, transition: Transition[T]) -> T:
        key = self._job(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    job = EditJob.model_validate_json(raw) if raw else None
                    new, result = transition(job)
                    if new is None:
                        pipe.unwatch()
                        return result
                    pipe.multi()
                    self._write(pipe, new)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    @_redis_errors
    def _insert(self, job: EditJob, max_queued_per_owner: int | None) -> CreatedJob:
        record = job.model_copy(update={"seq": 0}).model_dump_json()
        # The script appends the seq it assigns: `seq` is EditJob's last field.
        if not record.endswith(_SEQ_TAIL):
            raise AssertionError("EditJob JSON must end with its seq field")
        keys = [f"{self.p}seq", self._queued, self._owner_queued(job.owner),
                self._owner_jobs(job.owner), self._job(job.id)]
        if job.idempotency_key:
            keys.append(self._idem(job.owner, job.idempotency_key))
        reply = self._insert_script(keys=keys, args=[
            job.id, record[: -len("0}")],
            -1 if max_queued_per_owner is None else max_queued_per_owner,
            job.request_hash or "", json.dumps([job.request_hash, job.id]),
            int(self.retention_seconds), self._job(""),
        ])
        outcome = reply[0].decode()
        if outcome == "conflict":
            raise _idempotency_conflict(job.idempotency_key or "")
        if outcome == "full":
            raise _queue_full(int(reply[1]), max_queued_per_owner or 0)
        rank = int(reply[2])
        position = None if rank < 0 else rank
        if outcome == "existing":
            return CreatedJob(EditJob.model_validate_json(reply[1]), False, position)
        return CreatedJob(job.model_copy(update={"seq": int(reply[1])}), True, position)

    @_redis_errors
    def _count_submission(
        self, owner: str, idempotency_key: str | None, limit: int,
    ) -> tuple[float, int, bool]:
        keys = [f"{self.p}ratelog:{owner}", self._owner_queued(owner),
                f"{self.p}ratelog-retry:{owner}"]
        if idempotency_key:
            keys.append(self._idem(owner, idempotency_key))
        wait, queued, retry = self._admit_script(
            keys=keys, args=[repr(self.clock()), RATE_WINDOW_SECONDS, limit, uuid.uuid4().hex])
        return float(wait), int(queued), bool(retry)

    @_redis_errors
    def discard(self, job_id: str) -> None:
        """Delete a job that was never announced to workers (its enqueue failed)."""
        job = self._load(job_id)
        if job is None:
            return
        with self.redis.pipeline() as pipe:
            pipe.delete(self._job(job_id))
            pipe.zrem(self._queued, job_id)
            pipe.srem(self._owner_queued(job.owner), job_id)
            pipe.zrem(self._owner_jobs(job.owner), job_id)
            if job.idempotency_key:
                pipe.delete(self._idem(job.owner, job.idempotency_key))
            pipe.execute()

    @_redis_errors
    def _idempotency_record(self, owner: str, idempotency_key: str) -> tuple[str, str] | None:
        raw = self.redis.get(self._idem(owner, idempotency_key))
        if not raw:
            return None
        stored_hash, job_id = json.loads(raw)
        return stored_hash, job_id

    @_redis_errors
    def _load(self, job_id: str) -> EditJob | None:
        raw = self.redis.get(self._job(job_id))
        return EditJob.model_validate_json(raw) if raw else None

    def _load_many(self, job_ids: list[bytes | str]) -> list[EditJob]:
        if not job_ids:
            return []
        ids = [j.decode() if isinstance(j, bytes) else j for j in job_ids]
        raws = self.redis.mget([self._job(j) for j in ids])
        return [EditJob.model_validate_json(raw) for raw in raws if raw]

    @_redis_errors
    def list_jobs(self, owner: str, limit: int = 20, before: int | None = None) -> list[EditJob]:
        """The owner's jobs, newest first; pass the last job's `seq` as `before` for more."""
        high = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(self._owner_jobs(owner), high, "-inf", start=0, num=limit)
        return self._load_many(ids)

    @_redis_errors
    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one (0 = next); None if not queued."""
        rank = self.redis.zrank(self._queued, job_id)
        return None if rank is None else int(rank)

    @_redis_errors
    def count_queued(self, owner: str | None = None) -> int:
        if owner is None:
            return int(self.redis.zcard(self._queued))
        return int(self.redis.scard(self._owner_queued(owner)))

    @_redis_errors
    def count_by_state(self) -> dict[JobState, int]:
        """Jobs queued and running now (finished ones are counted when they finish)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._queued)
            pipe.zcard(self._running)
            queued, running = pipe.execute()
        return {JobState.queued: int(queued), JobState.running: int(running)}

    @_redis_errors
    def expired_leases(self) -> list[str]:
        ids = self.redis.zrangebyscore(self._running, "-inf", self.clock())
        return [j.decode() for j in ids]

    @_redis_errors
    def oldest_queued(self, limit: int = 20) -> list[EditJob]:
        """The first `limit` queued jobs, oldest first (for re-sending lost wake-ups)."""
        return self._load_many(self.redis.zrange(self._queued, 0, limit - 1))

    @_redis_errors
    def dead_letters(self, limit: int = 100) -> list[EditJob]:
        return self._load_many(self.redis.zrevrange(self._dead, 0, limit - 1))

    @_redis_errors
    def expired_jobs(self, limit: int = 1000) -> list[EditJob]:
        """Up to `limit` jobs finished more than `retention_seconds` ago (dead letters:
        `dead_letter_retention_seconds`), oldest first. They stay stored until
        `remove_expired`: the caller deletes their objects first."""
        now = self.clock()
        jobs: list[EditJob] = []
        for index, retention in ((self._finished, self.retention_seconds),
                                 (self._dead, self.dead_letter_retention_seconds)):
            ids = [j.decode() for j in self.redis.zrangebyscore(
                index, "-inf", now - retention, start=0, num=limit - len(jobs))]
            found = self._load_many(ids)
            gone = set(ids) - {job.id for job in found}
            if gone:  # removed by another sweeper between the two reads
                self.redis.zrem(index, *gone)
            jobs += found
            if len(jobs) >= limit:
                break
        return jobs

    @_redis_errors
    def remove_expired(self, job_id: str) -> None:
        """Delete a finished job's record and index entries (its objects are gone already)."""
        job = self._load(job_id)
        if job is not None and not job.state.terminal:
            return
        with self.redis.pipeline() as pipe:
            pipe.delete(self._job(job_id))
            pipe.zrem(self._finished, job_id)
            pipe.zrem(self._dead, job_id)
            if job is not None:
                pipe.zrem(self._owner_jobs(job.owner), job_id)
            pipe.execute()

    @_redis_errors
    def register_worker_heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        now = self.clock()
        record = json.dumps({**info, "worker_id": worker_id, "seen_at": now})
        with self.redis.pipeline() as pipe:
            pipe.hset(self._workers, worker_id, record)
            pipe.zadd(f"{self._workers}:seen", {worker_id: now})
            pipe.execute()

    @_redis_errors
    def live_workers(self, ttl_seconds: float) -> list[dict[str, Any]]:
        cutoff = self.clock() - ttl_seconds
        seen = f"{self._workers}:seen"
        stale = self.redis.zrangebyscore(seen, "-inf", f"({cutoff}")
        if stale:
            self.redis.zrem(seen, *stale)
            self.redis.hdel(self._workers, *stale)
        ids = self.redis.zrangebyscore(seen, cutoff, "+inf")
        raws = self.redis.hmget(self._workers, ids) if ids else []
        return [json.loads(raw) for raw in raws if raw]

    @_redis_errors
    def ping(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()


# =========================================================================================
# SQLite
# =========================================================================================

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_expires_at REAL,
    finished_at REAL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
DROP TABLE IF EXISTS rate_windows;
CREATE TABLE IF NOT EXISTS rate_log (
    owner TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_log_owner_at ON rate_log (owner, at);
CREATE INDEX IF NOT EXISTS rate_log_at ON rate_log (at);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    seen_at REAL NOT NULL
);
"""


def _sqlite_errors(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"The job store (SQLite) is unavailable ({exc}); retry after the indicated delay.",
                RETRY_AFTER_UNAVAILABLE,
            ) from exc

    return wrapper


class SqliteJobStore(BaseJobStore):
    """One SQLite file in WAL mode; each operation is one short transaction."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_seconds: float,
        max_attempts: int,
        clock: Clock = time.time,
        dead_letter_retention_seconds: float | None = None,
    ) -> None:
        super().__init__(retention_seconds=retention_seconds, max_attempts=max_attempts, clock=clock,
                         dead_letter_retention_seconds=dead_letter_retention_seconds)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    @classmethod
    def from_url(cls, url: str, settings: Settings, clock: Clock = time.time) -> "SqliteJobStore":
        return cls(
            url.removeprefix("sqlite:///"),
            retention_seconds=settings.job_retention_seconds,
            dead_letter_retention_seconds=settings.dead_letter_retention_seconds,
            max_attempts=settings.max_attempts,
            clock=clock,
        )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def _write_tx(self) -> "_Transaction":
        return _Transaction(self._connect())

    @staticmethod
    def _row_values(job: EditJob) -> dict[str, Any]:
        return {
            "id": job.id,
            "owner": job.owner,
            "state": job.state.value,
            "lease_expires_at": job.lease.expires_at if job.lease else None,
            "finished_at": job.timings.finished_at if job.state.terminal else None,
            "dead_lettered": int(job.dead_lettered),
            "data": job.model_dump_json(),
        }

    @_sqlite_errors
    def _mutate(self, job_id: str, transition: Transition[T]) -> T:
        with self._write_tx() as conn:
            row = conn.execute("SELECT seq, data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            job = _row_job(row) if row else None
            new, result = transition(job)
            if new is not None:
                conn.execute(
                    "UPDATE jobs SET state=:state, lease_expires_at=:lease_expires_at, "
                    "finished_at=:finished_at, dead_lettered=:dead_lettered, data=:data "
                    "WHERE id=:id",
                    self._row_values(new),
                )
            return result

    @_sqlite_errors
    def _insert(self, job: EditJob, max_queued_per_owner: int | None) -> CreatedJob:
        now = self.clock()
        with self._write_tx() as conn:
            if job.idempotency_key:
                conn.execute("DELETE FROM idempotency WHERE expires_at < ?", (now,))
                row = conn.execute(
                    "SELECT request_hash, job_id FROM idempotency WHERE owner=? AND key=?",
                    (job.owner, job.idempotency_key),
                ).fetchone()
                if row:
                    _check_idempotency(row["request_hash"], job.request_hash, job.idempotency_key)
                    existing = conn.execute(
                        "SELECT seq, data FROM jobs WHERE id=?", (row["job_id"],)
                    ).fetchone()
                    if existing:
                        found = _row_job(existing)
                        return CreatedJob(found, False, _queue_position(conn, found))
                    conn.execute(
                        "DELETE FROM idempotency WHERE owner=? AND key=?",
                        (job.owner, job.idempotency_key),
                    )
            if max_queued_per_owner is not None:
                (queued,) = conn.execute(
                    "SELECT count(*) FROM jobs WHERE owner=? AND state='queued'", (job.owner,)
                ).fetchone()
                if queued >= max_queued_per_owner:
                    raise _queue_full(queued, max_queued_per_owner)
            cursor = conn.execute(
                "INSERT INTO jobs (id, owner, state, lease_expires_at, finished_at, "
                "dead_lettered, data) VALUES (:id, :owner, :state, :lease_expires_at, "
                ":finished_at, :dead_lettered, :data)",
                self._row_values(job),
            )
            new = job.model_copy(update={"seq": int(cursor.lastrowid)})
            conn.execute("UPDATE jobs SET data=? WHERE id=?", (new.model_dump_json(), job.id))
            if job.idempotency_key:
                conn.execute(
                    "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)",
                    (
                        job.owner,
                        job.idempotency_key,
                        job.request_hash,
                        job.id,
                        now + self.retention_seconds,
                    ),
                )
            return CreatedJob(new, True, _queue_position(conn, new))

    @_sqlite_errors
    def discard(self, job_id: str) -> None:
        """Delete a job that was never announced to workers (its enqueue failed)."""
        with self._write_tx() as conn:
            conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            conn.execute("DELETE FROM idempotency WHERE job_id=?", (job_id,))

    @_sqlite_errors
    def _idempotency_record(self, owner: str, idempotency_key: str) -> tuple[str, str] | None:
        rows = self._select(
            "SELECT request_hash, job_id FROM idempotency "
            "WHERE owner=? AND key=? AND expires_at >= ?",
            (owner, idempotency_key, self.clock()),
        )
        return (rows[0]["request_hash"], rows[0]["job_id"]) if rows else None

    @_sqlite_errors
    def _load(self, job_id: str) -> EditJob | None:
        rows = self._select("SELECT seq, data FROM jobs WHERE id=?", (job_id,))
        return _row_job(rows[0]) if rows else None

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        conn = self._connect()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    @_sqlite_errors
    def list_jobs(self, owner: str, limit: int = 20, before: int | None = None) -> list[EditJob]:
        """The owner's jobs, newest first; pass the last job's `seq` as `before` for more."""
        rows = self._select(
            "SELECT seq, data FROM jobs WHERE owner=? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (owner, before if before is not None else 2**62, limit),
        )
        return [_row_job(row) for row in rows]

    @_sqlite_errors
    def queue_position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one (0 = next); None if not queued."""
        rows = self._select(
            "SELECT (SELECT count(*) FROM jobs q WHERE q.state='queued' AND q.seq < j.seq) "
            "FROM jobs j WHERE j.id=? AND j.state='queued'",
            (job_id,),
        )
        return int(rows[0][0]) if rows else None

    @_sqlite_errors
    def count_queued(self, owner: str | None = None) -> int:
        if owner is None:
            rows = self._select("SELECT count(*) FROM jobs WHERE state='queued'", ())
        else:
            rows = self._select(
                "SELECT count(*) FROM jobs WHERE state='queued' AND owner=?", (owner,)
            )
        return int(rows[0][0])

    @_sqlite_errors
    def count_by_state(self) -> dict[JobState, int]:
        """Jobs queued and running now (finished ones are counted when they finish)."""
        rows = self._select(
            "SELECT state, count(*) AS n FROM jobs WHERE state IN ('queued', 'running') "
            "GROUP BY state", ())
        counts = {JobState.queued: 0, JobState.running: 0}
        counts.update({JobState(row["state"]): int(row["n"]) for row in rows})
        return counts

    @_sqlite_errors
    def _count_submission(
        self, owner: str, idempotency_key: str | None, limit: int,
    ) -> tuple[float, int, bool]:
        with self._write_tx() as conn:
            retry = bool(idempotency_key) and conn.execute(
                "SELECT 1 FROM idempotency WHERE owner=? AND key=? AND expires_at >= ?",
                (owner, idempotency_key, self.clock()),
            ).fetchone() is not None
            # retries count in a window of their own (owner names hold no NUL)
            wait = self._log_submission(conn, f"{owner}\0retry" if retry else owner, limit)
            (queued,) = conn.execute(
                "SELECT count(*) FROM jobs WHERE owner=? AND state='queued'", (owner,)
            ).fetchone()
        return wait, int(queued), retry

    def _log_submission(self, conn: sqlite3.Connection, owner: str, limit: int) -> float:
        """The sliding-window log (see `admit`): 0 and the submission logged, or the wait."""
        now = self.clock()
        conn.execute("DELETE FROM rate_log WHERE at <= ?", (now - RATE_WINDOW_SECONDS,))
        count, oldest = conn.execute(
            "SELECT count(*), min(at) FROM rate_log WHERE owner=?", (owner,)).fetchone()
        if count >= limit:
            return oldest + RATE_WINDOW_SECONDS - now
        conn.execute("INSERT INTO rate_log VALUES (?, ?)", (owner, now))
        return 0.0

    @_sqlite_errors
    def expired_leases(self) -> list[str]:
        rows = self._select(
            "SELECT id FROM jobs WHERE state='running' AND lease_expires_at <= ? ORDER BY seq",
            (self.clock(),),
        )
        return [row["id"] for row in rows]

    @_sqlite_errors
    def oldest_queued(self, limit: int = 20) -> list[EditJob]:
        """The first `limit` queued jobs, oldest first (for re-sending lost wake-ups)."""
        rows = self._select(
            "SELECT seq, data FROM jobs WHERE state='queued' ORDER BY seq LIMIT ?", (limit,))
        return [_row_job(row) for row in rows]

    @_sqlite_errors
    def dead_letters(self, limit: int = 100) -> list[EditJob]:
        rows = self._select(
            "SELECT seq, data FROM jobs WHERE dead_lettered=1 ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        )
        return [_row_job(row) for row in rows]

    @_sqlite_errors
    def expired_jobs(self, limit: int = 1000) -> list[EditJob]:
        """Up to `limit` jobs finished more than `retention_seconds` ago (dead letters:
        `dead_letter_retention_seconds`), oldest first. They stay stored until
        `remove_expired`: the caller deletes their objects first."""
        now = self.clock()
        rows = self._select(
            "SELECT seq, data FROM jobs WHERE finished_at IS NOT NULL AND ("
            "(dead_lettered=0 AND finished_at < ?) OR (dead_lettered=1 AND finished_at < ?)) "
            "ORDER BY finished_at LIMIT ?",
            (now - self.retention_seconds, now - self.dead_letter_retention_seconds, limit),
        )
        return [_row_job(row) for row in rows]

    @_sqlite_errors
    def remove_expired(self, job_id: str) -> None:
        """Delete a finished job's record (its objects are gone already)."""
        with self._write_tx() as conn:
            conn.execute("DELETE FROM jobs WHERE id=? AND finished_at IS NOT NULL", (job_id,))

    @_sqlite_errors
    def register_worker_heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        now = self.clock()
        record = json.dumps({**info, "worker_id": worker_id, "seen_at": now})
        with self._write_tx() as conn:
            conn.execute(
                "INSERT INTO workers VALUES (?, ?, ?) ON CONFLICT (worker_id) "
                "DO UPDATE SET info=excluded.info, seen_at=excluded.seen_at",
                (worker_id, record, now),
            )

    @_sqlite_errors
    def live_workers(self, ttl_seconds: float) -> list[dict[str, Any]]:
        cutoff = self.clock() - ttl_seconds
        rows = self._select("SELECT info FROM workers WHERE seen_at >= ?", (cutoff,))
        return [json.loads(row["info"]) for row in rows]

    @_sqlite_errors
    def ping(self) -> None:
        self._select("SELECT 1", ())

    def close(self) -> None:
        """Connections are per operation; nothing to release."""


class _Transaction:
    """`BEGIN IMMEDIATE` ... COMMIT/ROLLBACK on a fresh connection, closed afterwards."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.conn.close()


def _queue_position(conn: sqlite3.Connection, job: EditJob) -> int | None:
    if job.state is not JobState.queued:
        return None
    (ahead,) = conn.execute(
        "SELECT count(*) FROM jobs WHERE state='queued' AND seq < ?", (job.seq,)
    ).fetchone()
    return int(ahead)


def _row_job(row: sqlite3.Row) -> EditJob:
    job = EditJob.model_validate_json(row["data"])
    return job if job.seq == row["seq"] else job.model_copy(update={"seq": row["seq"]})


def make_job_store(settings: Settings, clock: Clock = time.time) -> BaseJobStore:
    """The job store named by `settings.effective_job_store_url` (redis:// or sqlite:///)."""
    url = settings.effective_job_store_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobStore.from_url(url, settings, clock=clock)
    if url.startswith("sqlite:///"):
        return SqliteJobStore.from_url(url, settings, clock=clock)
    raise ValueError(
        f"MUSICEDIT_JOB_STORE_URL must start with redis://, rediss:// or sqlite:///, got "
        f"{url.split('://', 1)[0]}://..."
    )
