"""Typed exceptions shared by the gateway, the worker and the client.

They carry no HTTP details: `service/problems.py` maps each class to a status code in one
place. Every message says what the caller should change.
"""

from __future__ import annotations

# Seconds a client is told to wait (`Retry-After`) when a backing service (job store, object
# storage, broker) is unreachable or the gateway is not ready.
RETRY_AFTER_UNAVAILABLE = 5


class MusiceditError(Exception):
    """Base class of every error raised on purpose by musicedit code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InstructionError(MusiceditError, ValueError):
    """The edit instruction is empty, too long, has control characters or is not supported."""


class AudioError(MusiceditError):
    """Base class of upload audio problems."""


class UnsupportedAudio(AudioError):
    """The bytes are not audio we can decode (empty, corrupt, unknown or unsupported format)."""


class InvalidAudio(AudioError):
    """The audio decodes but breaks a limit (duration, channels, sample rate, silence, NaN/inf)."""


class PayloadTooLarge(MusiceditError):
    """The request body or an object is larger than the configured cap."""

    def __init__(self, message: str, limit_bytes: int) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes


class InvalidRequest(MusiceditError):
    """A request field is unknown, missing or out of range."""

    def __init__(self, message: str, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class MalformedRequest(MusiceditError):
    """The request body cannot be parsed (broken multipart, missing boundary)."""


class WebhookUrlRejected(MusiceditError):
    """The webhook URL is not http(s) or resolves to a loopback/private/link-local address."""


class Unauthorized(MusiceditError):
    """No API key, or an unknown one."""


class JobNotFound(MusiceditError):
    """No job with this id belongs to the caller (other keys' jobs are reported the same way)."""


class IdempotencyConflict(MusiceditError):
    """The Idempotency-Key was already used with a different request body."""


class JobNotFinished(MusiceditError):
    """The job has no result (yet): it is queued, running, failed or canceled."""


class JobNotCancelable(MusiceditError):
    """The job already reached a terminal state."""


class RetryLater(MusiceditError):
    """Base of errors that go away by themselves; `retry_after` is in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class RateLimited(RetryLater):
    """The API key sent more submissions than its per-minute limit."""


class TooManyQueuedJobs(RetryLater):
    """The API key already has the maximum number of queued jobs."""


class StoreUnavailable(RetryLater):
    """The job store (Redis or SQLite) cannot be reached."""


class StorageUnavailable(RetryLater):
    """The object storage (S3 or local directory) cannot be reached."""


class BrokerUnavailable(RetryLater):
    """The Celery broker cannot be reached."""


class ObjectNotFound(MusiceditError):
    """No object under this key in storage."""


class LeaseLost(MusiceditError):
    """A worker tried to act on a job it does not hold (lease taken over, job terminal)."""
