"""Errors -> RFC 9457 `application/problem+json`, in one place.

Every typed error from `musicedit.errors` has one status here; the message (detail) already
says what the caller should change.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from musicedit import errors
from musicedit.jobs import OUTPUT_MEDIA_TYPES
from musicedit.logs import log_event

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("musicedit.service")

# (status, title); the most specific class wins because lookup walks the MRO.
STATUS: dict[type[errors.MusiceditError], tuple[int, str]] = {
    errors.Unauthorized: (401, "Unauthorized"),
    errors.JobNotFound: (404, "Job not found"),
    errors.ObjectNotFound: (404, "Object not found"),
    errors.IdempotencyConflict: (409, "Idempotency key reused"),
    errors.JobNotFinished: (409, "Job not finished"),
    errors.JobNotCancelable: (409, "Job not cancelable"),
    errors.PayloadTooLarge: (413, "Upload too large"),
    errors.UnsupportedAudio: (415, "Unsupported audio"),
    errors.MalformedRequest: (400, "Malformed request"),
    errors.InvalidAudio: (422, "Invalid audio"),
    errors.InstructionError: (422, "Unsupported instruction"),
    errors.InvalidRequest: (422, "Invalid request"),
    errors.WebhookUrlRejected: (422, "Webhook URL rejected"),
    errors.RateLimited: (429, "Rate limit exceeded"),
    errors.TooManyQueuedJobs: (429, "Too many queued jobs"),
    errors.StoreUnavailable: (503, "Job store unavailable"),
    errors.StorageUnavailable: (503, "Storage unavailable"),
    errors.BrokerUnavailable: (503, "Queue unavailable"),
    errors.LeaseLost: (409, "Lease lost"),
}


def _slug(title: str) -> str:
    return title.lower().replace(" ", "-")


def problem_response(
    status: int,
    title: str,
    detail: str,
    instance: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:musicedit:problem:{_slug(title)}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extensions,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def status_for(exc: errors.MusiceditError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "Internal error"


async def _musicedit_error(request: Request, exc: errors.MusiceditError) -> JSONResponse:
    status, title = status_for(exc)
    headers: dict[str, str] = {}
    extensions: dict[str, Any] = {}
    if isinstance(exc, errors.RetryLater):
        headers["Retry-After"] = str(exc.retry_after)
        extensions["retry_after"] = exc.retry_after
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.PayloadTooLarge):
        extensions["limit_bytes"] = exc.limit_bytes
        headers["Connection"] = "close"  # the rest of the body is not read
    if isinstance(exc, errors.InvalidRequest) and exc.errors:
        extensions["errors"] = exc.errors
    level = logging.WARNING if status >= 500 else logging.INFO
    log_event(log, "request_rejected", level, path=request.url.path, status=status,
              error=type(exc).__name__, job_id=request.scope.get("musicedit.job_id"))
    return problem_response(status, title, exc.message, request.url.path, headers, **extensions)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
    return problem_response(
        422, "Invalid request", f"Fix these parameters: {summary}", request.url.path, errors=details
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    titles = {404: "Not found", 405: "Method not allowed"}
    detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if exc.status_code == 404:
        detail = f"No route {request.url.path}; see /docs for the API."
    return problem_response(
        exc.status_code,
        titles.get(exc.status_code, "HTTP error"),
        detail,
        request.url.path,
        dict(exc.headers or {}),
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log_event(log, "unhandled_error", logging.ERROR, exc_info=exc, path=request.url.path,
              error=type(exc).__name__, job_id=request.scope.get("musicedit.job_id"))
    return problem_response(
        500,
        "Internal error",
        "The server failed unexpectedly; retry later or report it with the time of the request.",
        request.url.path,
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.MusiceditError, _musicedit_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "retry_after": {"type": "integer"},
        "limit_bytes": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["type", "title", "status", "detail"],
}


def _example(status: int, title: str, detail: str, instance: str = "/v1/edits",
             **extensions: Any) -> dict[str, Any]:
    """A problem body exactly as `problem_response` builds it."""
    return {"type": f"urn:musicedit:problem:{_slug(title)}", "title": title, "status": status,
            "detail": detail, "instance": instance, **extensions}


_JOB_PATH = "/v1/edits/3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c"

# One typical answer per status for the OpenAPI schema; the details are the real messages.
PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    400: _example(400, "Malformed request", "The request body must be multipart/form-data with "
                  "a `file` part and an `instruction` field."),
    401: _example(401, "Unauthorized",
                  "Unknown API key; check the key you send as `Authorization: Bearer`."),
    404: _example(404, "Job not found", "No edit job '3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c' for this "
                  "API key; check the id.", _JOB_PATH),
    409: _example(409, "Idempotency key reused", "Idempotency-Key 'order-42' was already used "
                  "with a different request; use a new key for a different request, or resend "
                  "the identical request."),
    413: _example(413, "Upload too large", "The upload is larger than the limit of 104857600 "
                  "bytes (104.9 MB); send a shorter or compressed (FLAC/MP3) file.",
                  limit_bytes=104857600),
    415: _example(415, "Unsupported audio", "The uploaded file is empty. Send a WAV, FLAC, OGG "
                  "(Vorbis/Opus) or MP3 file."),
    422: _example(422, "Invalid request",
                  f"output_format must be one of {', '.join(OUTPUT_MEDIA_TYPES)}, got 'mp3'.",
                  errors=[{"loc": ["body", "output_format"], "msg": "unsupported value"}]),
    429: _example(429, "Rate limit exceeded", "This API key sent more than 60 submissions in "
                  "the last minute; wait for the indicated delay.", retry_after=37),
    503: _example(503, "Job store unavailable", "The job store (Redis) is unreachable; retry "
                  "after the indicated delay.", retry_after=errors.RETRY_AFTER_UNAVAILABLE),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries (schema and example) for the given problem statuses."""
    descriptions = {
        400: "Malformed multipart body",
        401: "Missing or unknown API key",
        404: "No such job for this API key",
        409: "Conflict (idempotency key reuse, job not finished or not cancelable)",
        413: "Upload over the size cap",
        415: "Not decodable audio / unsupported format",
        422: "Invalid instruction, parameters, audio limits or webhook URL",
        429: "Rate limit or queued-jobs cap (see Retry-After)",
        503: "Job store, storage or queue unavailable (see Retry-After)",
    }
    return {
        status: {
            "description": descriptions[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA,
                                             "example": PROBLEM_EXAMPLES[status]}},
        }
        for status in statuses
    }
