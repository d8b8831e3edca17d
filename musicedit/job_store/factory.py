"""`make_job_store(settings)`: the backend the job-store URL names."""

from __future__ import annotations

import time

from musicedit.job_store.redis_store import RedisJobStore
from musicedit.job_store.rules import BaseJobStore, Clock
from musicedit.job_store.sqlite_store import SqliteJobStore
from musicedit.settings import Settings


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
