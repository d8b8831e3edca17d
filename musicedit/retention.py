"""Delete jobs past their retention time together with their stored inputs and results.

Objects go first, the job record last: a record is the only thing that names its objects, so
a job whose object delete failed (storage down, access refused) keeps its record and the next
sweep retries it. The gateway and every worker sweep; deletes on both sides are idempotent,
so concurrent sweeps of the same job are harmless.
"""

from __future__ import annotations

import logging

from musicedit.errors import MusiceditError, ObjectNotFound
from musicedit.job_store import BaseJobStore
from musicedit.jobs import EditJob
from musicedit.logs import log_event
from musicedit.storage import ObjectStorage

log = logging.getLogger("musicedit.retention")


def object_keys(job: EditJob) -> list[str]:
    """The storage keys a job owns: its input (and its codes), once succeeded its result (and
    the result's codes)."""
    result_codes = job.result.codes_key if job.result else None
    return [key for key in (job.input_key, job.input_codes_key, job.result_key, result_codes)
            if key]


def sweep_expired(store: BaseJobStore, storage: ObjectStorage) -> int:
    """Expire finished jobs older than the retention time; returns how many objects went."""
    jobs = store.expired_jobs()
    deleted = 0
    kept = 0
    for job in jobs:
        try:
            for key in object_keys(job):
                try:
                    storage.delete(key)
                except ObjectNotFound:
                    pass  # gone already (another sweeper, or the cancel path)
                deleted += 1
        except MusiceditError as exc:
            kept += 1
            log_event(log, "retention_delete_failed", logging.WARNING, job_id=job.id,
                      error=type(exc).__name__)
            continue  # keep the record: it is what lets the next sweep find these objects
        store.remove_expired(job.id)
    if jobs:
        log_event(log, "retention_sweep", objects_deleted=deleted, jobs_expired=len(jobs) - kept,
                  jobs_kept=kept)
    return deleted
