"""What a cancel does beyond the job store's transition.

A job canceled while still queued is never seen by a worker again, so the gateway does what
the worker would have done when it ended: send its `edit.canceled` webhook, count it, and
delete its input. A running job is only flagged; its worker stops it at the next decode step
and does the rest.
"""

from __future__ import annotations

from musicedit.errors import MusiceditError
from musicedit.jobs import EditJob, JobState
from service.dependencies import ServiceContext


def cancel_job(context: ServiceContext, job_id: str, owner: str) -> EditJob:
    """Cancel `owner`'s job `job_id` (blocking: run it in the thread pool).

    Raises:
        JobNotFound: no such job for `owner`.
        JobNotCancelable: the job already ended.
    """
    job = context.store.request_cancel(job_id, owner)
    if job.state is JobState.canceled:
        # sent from the notifier's threads: the answer does not wait for the receiver
        context.notifier.notify(job)
        context.metrics.jobs.labels(JobState.canceled.value).inc()
        try:
            context.storage.delete(job.input_key)
        except MusiceditError:
            pass  # the retention sweep deletes it later
    return job
