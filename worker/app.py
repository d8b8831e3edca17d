"""The worker's Celery app: one thin task, and the signals that start and stop the runtime.

Run it with `musicedit worker` (or `celery -A worker.app worker --pool threads`).

Why these settings (issue 3): messages only wake workers up and the job store's `claim`
decides who runs a job, so a redelivered message never makes a second result.
- threads pool, concurrency = `max_batch_size`, `worker_prefetch_multiplier=1`: the worker
  reserves exactly as many messages as the engine has slots, and every reserved message is at
  once a task thread that has submitted its job to the one shared engine, which batches them.
- `task_acks_late`: a message is acked after its job finished or was handed back, so a crash
  before that redelivers it (Redis: the restore sweep, every 10 s, puts back messages older
  than the visibility timeout; `musicedit/queue.py` has the numbers).
- Recovery from `kill -9` does not wait for redelivery: the lease reaper of any live worker
  re-enqueues jobs whose lease expired (lease 30 s + reaper period 10 s < 60 s).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_init, worker_shutdown, worker_shutting_down

from musicedit.errors import BrokerUnavailable, MusiceditError, StoreUnavailable
from musicedit.logs import log_event
from musicedit.queue import (
    EDIT_QUEUE,
    EDIT_TASK,
    enqueue_edit,
    make_celery,
    queue_depth,
    queue_for,
    worker_queues,
)
from musicedit.settings import Settings, get_settings
from worker.edit_job import run_edit_job
from worker.runtime import WorkerRuntime, current_runtime, get_runtime, stop_runtime

log = logging.getLogger("musicedit.worker")


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings, name="musicedit-worker")
    app.conf.update(
        worker_pool="threads",
        worker_concurrency=settings.max_batch_size,
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,  # failures are recorded in the job store
        worker_hijack_root_logger=False,       # keep musicedit's JSON-line logs
        worker_redirect_stdouts=False,
    )

    def requeue(job_id: str) -> None:
        # to the job's queue (a separation-only job to the separation pool); if the store
        # cannot say, to the edit queue, whose workers run every kind of step
        queue = EDIT_QUEUE
        current = current_runtime()
        if current is not None:
            try:
                queue = queue_for(current.deps.store.get(job_id).instruction)
            except MusiceditError:
                pass
        enqueue_edit(app, job_id, queue)

    def runtime() -> WorkerRuntime:
        return get_runtime(settings, requeue, lambda queue: queue_depth(app, (queue,)))

    @app.task(name=EDIT_TASK, ignore_result=True)
    def edit(job_id: str) -> str:
        """Wake-up for job `job_id`; the work is `worker.edit_job.run_edit_job`."""
        try:
            return run_edit_job(job_id, runtime().deps).value
        except (BrokerUnavailable, StoreUnavailable) as exc:
            # the job store or broker stayed down: keep the message so the job is not stranded
            log_event(log, "task_requeued", logging.WARNING, job_id=job_id, error=exc.message)
            raise Reject(exc.message, requeue=True) from exc

    def start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return
        try:
            runtime()  # load the model before consuming the first message
        except Exception as exc:
            # Celery logs and ignores signal-handler errors; a worker without its model must
            # not take (and ack) messages, so stop before consuming
            log_event(log, "worker_start_failed", logging.CRITICAL, exc_info=exc,
                      error=f"{type(exc).__name__}: {exc}")
            raise SystemExit(1) from exc

    def begin_shutdown(**_: Any) -> None:
        current = current_runtime()
        if current is not None:
            current.deps.shutdown.begin(settings.worker_shutdown_grace_seconds)

    def stop(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is app:
            stop_runtime()

    # weak=False: the handlers are closures that would otherwise be garbage-collected
    worker_init.connect(start, weak=False)
    worker_shutting_down.connect(begin_shutdown, weak=False)
    worker_shutdown.connect(stop, weak=False)
    return app


def worker_argv(settings: Settings) -> list[str]:
    """`celery worker` arguments matching the design above."""
    return [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.max_batch_size}",
        f"--queues={','.join(worker_queues(settings.worker_role))}",
        f"--loglevel={settings.log_level}",
        f"--hostname=musicedit-{os.getpid()}@%h",  # unique per process on a shared host
        # the job store carries worker liveness; broadcast features are not needed
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


app = create_worker_app(get_settings())


def run_worker(settings: Settings) -> None:
    """Consume edit jobs until stopped (SIGTERM: Celery's warm shutdown)."""
    app.worker_main(worker_argv(settings))
