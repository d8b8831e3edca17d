"""The Celery app: messages carry only a job id and wake a worker up.

Queue settings and why (issue 3):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acked only after the job
  finished, so a crash never silently drops it.
- `worker_prefetch_multiplier=1` with worker concurrency = `max_batch_size`: each worker
  slot holds at most one unacked message, so a worker holds exactly the batch it can form.
  The worker engineer sets `worker_prefetch_multiplier` * concurrency >= `max_batch_size`.
- Visibility timeout (Redis broker, `broker_visibility_timeout_seconds`, default 1 h): it is
  deliberately NOT what brings back the jobs of a `kill -9`'d worker. The job store's lease
  (`lease_seconds`, 30 s) expires and the reaper (every `reaper_interval_seconds`, 10 s)
  re-enqueues the job, so it runs again within ~40 s. A late redelivery after the visibility
  timeout is harmless: `JobStore.claim` refuses jobs that are terminal or leased by a live
  worker, so no job produces two results. The SQLAlchemy transport has no visibility timeout
  (its transport options go to `create_engine`), the lease covers that case the same way.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

from musicedit.errors import BrokerUnavailable
from musicedit.settings import Settings

EDIT_TASK = "musicedit.edit"
EDIT_QUEUE = "musicedit.edits"
RETRY_AFTER_UNAVAILABLE = 5


class _RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, surviving a broker restart.

    After a lost connection Celery collects the connection (the transport drops its client)
    and then closes it again; closing the channel a second time tries to restore unacked
    messages through the dropped client and raises AttributeError, which Celery treats as
    unrecoverable: the worker process exits instead of reconnecting. The messages stay in
    Redis's unacked set either way (restored after the visibility timeout; the job store's
    leases recover their jobs sooner), so that close has nothing left to do.
    """

    def close(self) -> None:
        try:
            super().close()
        except AttributeError:
            if self.connection.client is not None:
                raise

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        # A task that ran across the restart acks through its old, collected channel: same
        # AttributeError, same outcome (the message is redelivered after the visibility
        # timeout and `claim` skips the finished job), so the worker must not exit over it.
        try:
            super().basic_ack(delivery_tag, multiple=multiple)
        except AttributeError:
            if self.connection.client is not None:
                raise


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with `_RedisChannel`; `broker_transport` for redis URLs."""

    Channel = _RedisChannel


def make_celery(settings: Settings, name: str = "musicedit") -> Celery:
    """A Celery app on the configured broker (Redis or embedded SQLAlchemy/SQLite)."""
    broker = settings.effective_broker_url
    if broker.startswith("sqla+sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery(name, broker=broker)
    transport_options: dict[str, Any] = {}
    if broker.startswith(("redis://", "rediss://")):
        app.conf.broker_transport = f"{__name__}:RedisTransport"
        transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "socket_timeout": settings.redis_socket_timeout_seconds,
            "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # results live in the job store and object storage
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=EDIT_QUEUE,
        task_routes={EDIT_TASK: {"queue": EDIT_QUEUE}},
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_socket_timeout_seconds,
        enable_utc=True,
    )
    return app


def enqueue_edit(celery_app: Celery, job_id: str) -> None:
    """Send the wake-up message for `job_id`; raise `BrokerUnavailable` if it cannot be sent."""
    try:
        celery_app.send_task(
            EDIT_TASK,
            args=[job_id],
            queue=EDIT_QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:  # kombu raises transport-specific errors
        raise BrokerUnavailable(
            "The job queue is unreachable; retry after the indicated delay.",
            RETRY_AFTER_UNAVAILABLE,
        ) from exc


def queue_depth(celery_app: Celery) -> int:
    """Messages waiting in the edit queue (not counting unacked ones held by workers)."""
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            declared = conn.default_channel.queue_declare(queue=EDIT_QUEUE, passive=False)
            return int(declared.message_count)
    except Exception as exc:
        raise BrokerUnavailable(
            "The job queue is unreachable; retry after the indicated delay.",
            RETRY_AFTER_UNAVAILABLE,
        ) from exc
