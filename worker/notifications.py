"""Signed webhook POSTs for finished jobs, sent off the task threads.

Delivery retries with backoff (up to half a minute) and must not hold an engine slot, so it
runs in a small thread pool; shutdown waits a bounded time for pending deliveries.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait

from musicedit.jobs import EditJob, WebhookEvent
from musicedit.logs import log_event
from musicedit.settings import Settings
from musicedit.webhooks import WebhookSender

log = logging.getLogger("musicedit.worker")


class WebhookNotifier:
    def __init__(self, settings: Settings, sender: WebhookSender | None = None,
                 max_parallel: int = 4) -> None:
        self.settings = settings
        self.sender = sender or WebhookSender.from_settings(settings)
        # status links in the body point at the gateway
        self.base_url = settings.public_base_url or f"http://{settings.host}:{settings.port}"
        self._executor = ThreadPoolExecutor(max_parallel, thread_name_prefix="webhook")
        self._pending: set[Future[bool]] = set()

    def notify(self, job: EditJob) -> Future[bool] | None:
        """Queue the webhook of a terminal `job`, if it has a webhook URL."""
        if not job.webhook_url:
            return None
        secret = self.settings.webhook_secret_for(job.owner)
        if secret is None:
            log_event(log, "webhook_skipped", logging.WARNING, job_id=job.id,
                      reason="the job's API key is no longer configured")
            return None
        body = WebhookEvent.for_job(job, self.base_url).model_dump_json().encode()
        future = self._executor.submit(self.sender.send, job.webhook_url, body, secret, job.id)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` for deliveries in flight, then stop."""
        _, unfinished = wait(list(self._pending), timeout=timeout)
        if unfinished:
            log_event(log, "webhooks_abandoned", logging.WARNING, count=len(unfinished))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.sender.close()
