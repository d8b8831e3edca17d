"""The embedded job store: one SQLite file in WAL mode, each operation one short
`BEGIN IMMEDIATE` transaction, safe across the gateway and worker processes of one machine.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from musicedit.errors import RETRY_AFTER_UNAVAILABLE, StoreUnavailable
from musicedit.job_store.rules import (
    RATE_WINDOW_SECONDS,
    BaseJobStore,
    Clock,
    CreatedJob,
    T,
    Transition,
    check_idempotency,
    queue_full,
)
from musicedit.jobs import EditJob, JobState
from musicedit.settings import Settings

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
        super().__init__(retention_seconds=retention_seconds, max_attempts=max_attempts,
                         clock=clock, dead_letter_retention_seconds=dead_letter_retention_seconds)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    @classmethod
    def from_url(cls, url: str, settings: Settings, clock: Clock = time.time) -> SqliteJobStore:
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

    def _write_tx(self) -> _Transaction:
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
                    check_idempotency(row["request_hash"], job.request_hash, job.idempotency_key)
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
                    raise queue_full(queued, max_queued_per_owner)
            cursor = conn.execute(
                "INSERT INTO jobs (id, owner, state, lease_expires_at, finished_at, "
                "dead_lettered, data) VALUES (:id, :owner, :state, :lease_expires_at, "
                ":finished_at, :dead_lettered, :data)",
                self._row_values(job),
            )
            assert cursor.lastrowid is not None  # set by every INSERT
            new = job.model_copy(update={"seq": cursor.lastrowid})
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
        rows = self._select(
            "SELECT seq, data FROM jobs WHERE owner=? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (owner, before if before is not None else 2**62, limit),
        )
        return [_row_job(row) for row in rows]

    @_sqlite_errors
    def queue_position(self, job_id: str) -> int | None:
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

