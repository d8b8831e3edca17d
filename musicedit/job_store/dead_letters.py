"""The operator's actions on dead letters: jobs failed for good by a fault of ours (abandoned
by `MAX_ATTEMPTS` workers, the model raising on them, storage unreachable past the retries),
kept with their input for `DEAD_LETTER_RETENTION_SECONDS`.

`musicedit dead-letters` only parses arguments and calls these.
"""

from __future__ import annotations

from celery import Celery

from musicedit.errors import JobNotFound, ObjectNotFound
from musicedit.job_store.rules import BaseJobStore
from musicedit.jobs import EditJob
from musicedit.queue import enqueue_edit, queue_for
from musicedit.retention import object_keys
from musicedit.storage import ObjectStorage


def get_dead_letter(store: BaseJobStore, job_id: str) -> EditJob:
    """The dead letter `job_id`.

    Raises:
        JobNotFound: no such job, or the job is not a dead letter.
    """
    job = store.get(job_id)
    if not job.dead_lettered:
        raise JobNotFound(f"job {job_id} is {job.state.value}, not a dead letter; list them "
                          "with `musicedit dead-letters list`")
    return job


def requeue_dead_letter(store: BaseJobStore, storage: ObjectStorage, celery: Celery,
                        job_id: str) -> EditJob:
    """Queue a dead letter again as a fresh job and send its wake-up message.

    Raises:
        JobNotFound: `job_id` is not a dead letter.
        ObjectNotFound: its input is gone (retention or purge), so it cannot run again.
    """
    job = get_dead_letter(store, job_id)
    if not storage.exists(job.input_key):
        raise ObjectNotFound(f"the input {job.input_key} of job {job.id} is gone; it cannot "
                             "run again")
    queued = store.requeue_dead_letter(job.id)
    enqueue_edit(celery, job.id, queue_for(job.instruction))
    return queued


def purge_dead_letter(store: BaseJobStore, storage: ObjectStorage, job_id: str) -> None:
    """Delete a dead letter and its stored objects now, before its retention ends.

    Raises:
        JobNotFound: `job_id` is not a dead letter.
    """
    job = get_dead_letter(store, job_id)
    for key in object_keys(job):
        if storage.exists(key):
            storage.delete(key)
    store.remove_expired(job.id)
