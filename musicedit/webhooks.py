"""Signed webhook delivery: URL policy, signing, verification, a retrying sender and the
notifier that sends a finished job's event off the caller's thread.

Headers of every POST:
- `X-Musicedit-Timestamp: <unix seconds>`, the time of signing;
- `X-Musicedit-Signature: t=<the same unix seconds>,v1=<hex HMAC-SHA256>` over
  `f"{t}.{body}"`, keyed with the API key's webhook secret
  (`musicedit.settings.webhook_secret_from_api_key(api_key)`, which the key's owner can
  compute).
A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares it in
constant time and refuses timestamps more than five minutes old (`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from urllib.parse import urlsplit

import httpx

from musicedit.errors import WebhookUrlRejected
from musicedit.jobs import EditJob, WebhookEvent
from musicedit.logs import log_event
from musicedit.settings import Settings

SIGNATURE_HEADER = "X-Musicedit-Signature"
TIMESTAMP_HEADER = "X-Musicedit-Timestamp"
DEFAULT_TOLERANCE_SECONDS = 300
log = logging.getLogger("musicedit.webhooks")


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `X-Musicedit-Signature` header value for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def signed_headers(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The timestamp and signature headers of one delivery attempt of `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(t), SIGNATURE_HEADER: sign(body, secret, t)}


def verify(
    body: bytes,
    header: str,
    secret: str,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if `header` is a valid signature of `body` made within `tolerance_seconds`."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_seconds:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: str, allow_private: bool) -> str:
    """Validate `url` and return it; refuse non-http(s) and, unless `allow_private`, any host
    that resolves to a loopback, private, link-local or otherwise non-public address."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # "http://[::1", "http://host:99999": not a URL, not a server error
        parts, port = None, 0
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlRejected(
            f"webhook_url must be an absolute http:// or https:// URL, got {url[:100]!r}."
        )
    if len(url) > 2048:
        raise WebhookUrlRejected("webhook_url is longer than 2048 characters; shorten it.")
    if parts.username or parts.password:
        raise WebhookUrlRejected("webhook_url must not contain credentials (user:pass@).")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise WebhookUrlRejected(
            f"webhook_url host {parts.hostname!r} does not resolve; use a reachable host."
        ) from exc
    addresses = {str(info[4][0]) for info in infos}
    blocked = sorted(a for a in addresses if not _is_public(a))
    if blocked:
        raise WebhookUrlRejected(
            f"webhook_url host {parts.hostname!r} resolves to non-public address(es) "
            f"{', '.join(blocked)}; webhooks go only to public addresses (operators can allow "
            "private ones with MUSICEDIT_WEBHOOK_ALLOW_PRIVATE=true)."
        )
    return url


class WebhookSender:
    """POSTs signed JSON, retrying network errors, 429 and 5xx with exponential backoff."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        retries: int,
        backoff_seconds: float,
        allow_private: bool,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.allow_private = allow_private
        self.sleep = sleep
        self.client = httpx.Client(
            timeout=timeout_seconds, follow_redirects=False, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSender:
        return cls(
            timeout_seconds=settings.webhook_timeout_seconds,
            retries=settings.webhook_retries,
            backoff_seconds=settings.webhook_backoff_seconds,
            allow_private=settings.webhook_allow_private,
        )

    def send(self, url: str, body: bytes, secret: str, job_id: str) -> bool:
        """Deliver `body`; True once the receiver answers 2xx, False after the last retry."""
        for attempt in range(1, self.retries + 2):
            if attempt > 1:
                self.sleep(self.backoff_seconds * 2 ** (attempt - 2))
            try:
                # re-checked on every attempt: DNS may have changed since submission
                check_webhook_url(url, self.allow_private)
                headers = {"Content-Type": "application/json", **signed_headers(body, secret)}
                response = self.client.post(url, content=body, headers=headers)
            except WebhookUrlRejected as exc:
                log_event(log, "webhook_refused", logging.WARNING, job_id=job_id,
                          reason=exc.message)
                return False
            except httpx.HTTPError as exc:
                log_event(log, "webhook_retry", job_id=job_id, attempt=attempt,
                          error=type(exc).__name__)
                continue
            status = response.status_code
            if 200 <= status < 300:
                log_event(log, "webhook_delivered", job_id=job_id, attempt=attempt)
                return True
            if status != 429 and status < 500:
                log_event(log, "webhook_rejected", logging.WARNING, job_id=job_id, status=status)
                return False
            log_event(log, "webhook_retry", job_id=job_id, attempt=attempt, status=status)
        log_event(log, "webhook_gave_up", logging.WARNING, job_id=job_id,
                  attempts=self.retries + 1)
        return False

    def close(self) -> None:
        self.client.close()


class WebhookNotifier:
    """Sends the signed event of a finished job from a small thread pool.

    Delivery retries with backoff (up to about half a minute) and must hold neither an engine
    slot (worker) nor a request (gateway: the `edit.canceled` of a job canceled while queued).
    Pending retries live only in this process's memory: `close` waits a bounded time for them,
    a killed process loses them.
    """

    def __init__(self, settings: Settings, sender: WebhookSender | None = None,
                 max_parallel: int = 4) -> None:
        self.settings = settings
        self.sender = sender or WebhookSender.from_settings(settings)
        # status links in the body point at the gateway; there is no request to take them from
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
