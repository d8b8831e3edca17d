"""The Celery app: messages carry only a job id and wake a worker up.

Queue settings and why (issue 3). The three goals: (a) a worker can form batches of the
engine's size, (b) a job held by a worker killed with `kill -9` runs again within 60 s,
(c) a redelivered job never produces two results.
- Prefetch (a): `worker_prefetch_multiplier=1` with worker concurrency = `max_batch_size`
  (threads pool, `worker/app.py`): with `task_acks_late` a running task keeps its message
  unacked, so each worker reserves exactly `max_batch_size` messages, one per task thread,
  and every one of them is a job submitted to the worker's one engine.
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acked only after the job
  finished or was handed back, so a crash never silently drops it.
- Visibility timeout (Redis broker, `broker_visibility_timeout_seconds`, default 1 h) and
  restore interval: kombu 5.7's Redis transport keeps every delivered, unacked message in
  its `unacked` hash; a consumer's event loop calls `restore_visible` every
  `unacked_restore_interval` s and scans on every `unacked_restore_throttle`-th call
  (defaults 10 s and 10: one scan per ~100 s), putting back messages delivered more than the
  visibility timeout ago. We set the interval to 10 s and the throttle to 1, so an orphaned
  message is back in the queue at most visibility timeout + 10 s after its delivery (one
  ZRANGE under a Redis mutex per worker every 10 s).
  Neither is what gives (b): a visibility timeout short enough for 60 s would redeliver every
  job that decodes for longer than it. The job store's lease (`lease_seconds`, 30 s) expires
  and a worker's reaper (every `reaper_interval_seconds`, 10 s) re-enqueues the job, so it
  runs again within ~40 s. The message restored an hour later, like any redelivery, is (c)
  harmless: `JobStore.claim` refuses jobs that are terminal or leased by a live worker, and
  only the lease holder can `complete`, so no job produces two results.
- The SQLAlchemy transport (embedded default) has neither option (its transport options go
  to `create_engine`); the lease covers that case the same way.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

from musicedit.errors import RETRY_AFTER_UNAVAILABLE, BrokerUnavailable
from musicedit.jobs import NormalizedInstruction
from musicedit.settings import Settings, WorkerRole

EDIT_TASK = "musicedit.edit"
# Jobs with a generative step (MusicGen workers, which also host the separator).
EDIT_QUEUE = "musicedit.edits"
# Jobs whose every step runs on the source separator: any worker with a separator takes them,
# so a pool of separation-only workers (`MUSICEDIT_WORKER_ROLE=separation`) scales apart.
SEPARATION_QUEUE = "musicedit.separation"
QUEUES = (EDIT_QUEUE, SEPARATION_QUEUE)
UNACKED_RESTORE_INTERVAL_SECONDS = 10


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
            # the restore sweep (see above): every 10 s, a scan each time; a backstop for
            # orphaned messages only, the lease reaper brings killed workers' jobs back
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_SECONDS,
            "unacked_restore_throttle": 1,
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


def queue_for(instruction: NormalizedInstruction) -> str:
    """The queue of a job with `instruction`: the separation queue when the separator runs
    every step, else the edit queue."""
    if all(engine == "separation" for engine in instruction.engines):
        return SEPARATION_QUEUE
    return EDIT_QUEUE


def worker_queues(role: WorkerRole) -> tuple[str, ...]:
    """The queues a worker of `role` consumes (`Settings.worker_role`)."""
    return {"all": QUEUES, "edits": (EDIT_QUEUE,), "separation": (SEPARATION_QUEUE,)}[role]


def enqueue_edit(celery_app: Celery, job_id: str, queue: str = EDIT_QUEUE) -> None:
    """Send the wake-up message for `job_id` to `queue` (`queue_for` the job); raise
    `BrokerUnavailable` if it cannot be sent."""
    try:
        celery_app.send_task(
            EDIT_TASK,
            args=[job_id],
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:  # kombu raises transport-specific errors
        raise BrokerUnavailable(
            "The job queue is unreachable; retry after the indicated delay.",
            RETRY_AFTER_UNAVAILABLE,
        ) from exc


def queue_depth(celery_app: Celery, queues: tuple[str, ...] = QUEUES) -> int:
    """Messages waiting in `queues` (not counting unacked ones held by workers)."""
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            return sum(int(conn.default_channel.queue_declare(queue=queue, passive=False)
                           .message_count) for queue in queues)
    except Exception as exc:
        raise BrokerUnavailable(
            "The job queue is unreachable; retry after the indicated delay.",
            RETRY_AFTER_UNAVAILABLE,
        ) from exc
