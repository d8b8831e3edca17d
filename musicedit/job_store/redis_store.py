"""The production job store: job records as JSON strings in Redis, indexes as sorted sets.

Every transition is a WATCH/MULTI optimistic transaction on the job's key; the two calls of
every submission (`admit`, `create_with_position`) are one round trip each, a Lua script.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from musicedit.errors import RETRY_AFTER_UNAVAILABLE, StoreUnavailable
from musicedit.job_store.rules import (
    RATE_WINDOW_SECONDS,
    BaseJobStore,
    Clock,
    CreatedJob,
    T,
    Transition,
    idempotency_conflict,
    queue_full,
)
from musicedit.jobs import EditJob, JobState
from musicedit.settings import Settings


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


def _members(reply: Any) -> list[str]:
    """The members of a sorted-set reply as strings (redis-py returns bytes)."""
    return [m.decode() if isinstance(m, bytes) else str(m) for m in reply]


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
        super().__init__(retention_seconds=retention_seconds, max_attempts=max_attempts,
                         clock=clock, dead_letter_retention_seconds=dead_letter_retention_seconds)
        self.redis = client
        self.p = prefix
        self._insert_script = client.register_script(_INSERT_SCRIPT)
        self._admit_script = client.register_script(_ADMIT_SCRIPT)

    @classmethod
    def from_url(cls, url: str, settings: Settings, clock: Clock = time.time) -> RedisJobStore:
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
            raise idempotency_conflict(job.idempotency_key or "")
        if outcome == "full":
            raise queue_full(int(reply[1]), max_queued_per_owner or 0)
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

    def _load_many(self, job_ids: list[str]) -> list[EditJob]:
        if not job_ids:
            return []
        raws = self.redis.mget([self._job(j) for j in job_ids])
        return [EditJob.model_validate_json(raw) for raw in raws if raw]

    @_redis_errors
    def snapshots(self, job_ids: list[str]) -> dict[str, tuple[EditJob, int | None]]:
        """One round trip for all of them: every record and every queue rank."""
        if not job_ids:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.get(self._job(job_id))
                pipe.zrank(self._queued, job_id)
            replies = pipe.execute()
        found: dict[str, tuple[EditJob, int | None]] = {}
        for job_id, raw, rank in zip(job_ids, replies[::2], replies[1::2], strict=True):
            if raw:
                job = EditJob.model_validate_json(raw)
                found[job_id] = (job, rank if job.state is JobState.queued else None)
        return found

    @_redis_errors
    def list_jobs(self, owner: str, limit: int = 20, before: int | None = None) -> list[EditJob]:
        high = f"({before}" if before is not None else "+inf"
        return self._load_many(_members(self.redis.zrevrangebyscore(
            self._owner_jobs(owner), high, "-inf", start=0, num=limit)))

    @_redis_errors
    def queue_position(self, job_id: str) -> int | None:
        rank = cast("int | None", self.redis.zrank(self._queued, job_id))
        return rank

    @_redis_errors
    def count_queued(self, owner: str | None = None) -> int:
        if owner is None:
            return int(self.redis.zcard(self._queued))
        return int(self.redis.scard(self._owner_queued(owner)))

    @_redis_errors
    def count_by_state(self) -> dict[JobState, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._queued)
            pipe.zcard(self._running)
            queued, running = pipe.execute()
        return {JobState.queued: int(queued), JobState.running: int(running)}

    @_redis_errors
    def expired_leases(self) -> list[str]:
        return _members(self.redis.zrangebyscore(self._running, "-inf", self.clock()))

    @_redis_errors
    def oldest_queued(self, limit: int = 20) -> list[EditJob]:
        return self._load_many(_members(self.redis.zrange(self._queued, 0, limit - 1)))

    @_redis_errors
    def dead_letters(self, limit: int = 100) -> list[EditJob]:
        return self._load_many(_members(self.redis.zrevrange(self._dead, 0, limit - 1)))

    @_redis_errors
    def expired_jobs(self, limit: int = 1000) -> list[EditJob]:
        now = self.clock()
        jobs: list[EditJob] = []
        for index, retention in ((self._finished, self.retention_seconds),
                                 (self._dead, self.dead_letter_retention_seconds)):
            ids = _members(self.redis.zrangebyscore(
                index, "-inf", now - retention, start=0, num=limit - len(jobs)))
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
        stale = _members(self.redis.zrangebyscore(seen, "-inf", f"({cutoff}"))
        if stale:
            self.redis.zrem(seen, *stale)
            self.redis.hdel(self._workers, *stale)
        ids = _members(self.redis.zrangebyscore(seen, cutoff, "+inf"))
        raws = self.redis.hmget(self._workers, ids) if ids else []
        return [json.loads(raw) for raw in raws if raw]

    @_redis_errors
    def ping(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()

