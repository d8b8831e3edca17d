"""The job store: the single source of truth for job state, leases and per-key counters.

- `rules`: every state transition, written once (`BaseJobStore`).
- `redis_store`: `RedisJobStore` (production), with its Lua scripts.
- `sqlite_store`: `SqliteJobStore` (the embedded default of `make serve`).
- `factory`: `make_job_store(settings)`.
- `dead_letters`: the operator's requeue and purge of jobs failed for good.
"""

from musicedit.job_store.factory import make_job_store
from musicedit.job_store.redis_store import RedisJobStore
from musicedit.job_store.rules import BaseJobStore, ClaimResult, CreatedJob
from musicedit.job_store.sqlite_store import SqliteJobStore

__all__ = ["BaseJobStore", "ClaimResult", "CreatedJob", "RedisJobStore", "SqliteJobStore",
           "make_job_store"]
