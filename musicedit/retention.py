"""Delete jobs past their retention time together with their stored inputs and results."""

from __future__ import annotations

import logging

from musicedit.errors import MusiceditError
from musicedit.job_store import BaseJobStore
from musicedit.logs import log_event
from musicedit.storage import ObjectStorage

log = logging.getLogger("musicedit.retention")


def sweep_expired(store: BaseJobStore, storage: ObjectStorage) -> int:
    """Expire finished jobs older than the retention time; returns how many objects went."""
    keys = store.expire_jobs()
    deleted = 0
    for key in keys:
        try:
            storage.delete(key)
            deleted += 1
        except MusiceditError as exc:
            log_event(log, "object_delete_failed", logging.WARNING, object_key=key,
                      error=type(exc).__name__)
    if keys:
        log_event(log, "retention_sweep", objects_deleted=deleted, objects_expired=len(keys))
    return deleted
