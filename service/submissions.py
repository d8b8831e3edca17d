"""The submit workflow behind `POST /v1/edits`.

Order matters: everything that can reject the request (caps, multipart, fields, instruction,
idempotency, webhook URL, audio probe) runs before anything is written, so a rejected request
leaves nothing in storage and nothing in the queue. Only then: store the input, create the
job, enqueue the wake-up message; a failure in those steps undoes the earlier ones.

Thread-pool hops cost CPU on a busy gateway, so a submission makes two: the admission check
(rate limit and queued cap, one job-store round trip) before the body is read, so a caller
over its limits never makes us read its upload; and everything after the body, in one
`_submit_upload` call.

A retry is not a new submission: when the caller already used the request's
`Idempotency-Key` (the same round trip tells), admission skips the queued-jobs cap and counts
the request in a sliding one-minute window of its own, so a retry of the job that filled the
cap, or that used the last of the minute's quota, gets that job back instead of `429`, while
retries still cannot send more than the rate limit of uploads; another body with the key is
`409`. The key is looked up as soon as the fields are read, before the webhook URL's DNS
lookup and the audio probe: a retry costs the gateway the upload and a hash, not a probe,
whether it replays or conflicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from musicedit.audio_probe import MEDIA_TYPES, AudioLimits, probe_audio
from musicedit.errors import InvalidRequest, MusiceditError
from musicedit.instructions import normalize_instruction
from musicedit.jobs import (
    OUTPUT_MEDIA_TYPES,
    EditJob,
    InputAudio,
    JobState,
    NormalizedInstruction,
    SamplingParams,
    seed_for_job,
)
from musicedit.logs import log_event
from musicedit.queue import enqueue_edit
from musicedit.settings import ApiKey
from musicedit.storage import input_key
from musicedit.webhooks import check_webhook_url
from service.dependencies import ServiceContext
from service.edit_form import FORM_FIELDS, PARAM_FIELDS
from service.uploads import MultipartUpload, check_content_length, receive_multipart

log = logging.getLogger("musicedit.service")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass
class Submission:
    job: EditJob
    created: bool
    queue_position: int | None  # read when the job was stored; None unless queued


def _check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces "
            "(a UUID is a good choice)."
        )
    return value


def _validate_fields(
    upload: MultipartUpload, context: ServiceContext
) -> tuple[NormalizedInstruction, SamplingParams, str, str | None]:
    fields = {name: value.strip() for name, value in upload.fields.items()}
    if upload.file_path is None:
        raise InvalidRequest(
            "The form has no `file` part; attach the audio as multipart field `file`.",
            [{"loc": ["body", "file"], "msg": "field required"}],
        )
    if "instruction" not in fields:
        raise InvalidRequest(
            "The form has no `instruction` field; send e.g. instruction=Add drums.",
            [{"loc": ["body", "instruction"], "msg": "field required"}],
        )
    instruction = normalize_instruction(upload.fields["instruction"], context.settings.stems)
    raw_params = {name: fields[name] for name in PARAM_FIELDS if fields.get(name, "") != ""}
    try:
        params = SamplingParams.model_validate(raw_params)
    except ValidationError as exc:
        details = [
            {"loc": ["body", *map(str, err["loc"])], "msg": err["msg"]} for err in exc.errors()
        ]
        summary = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in details)
        raise InvalidRequest(
            f"Out-of-range or malformed sampling parameters: {summary}. Allowed: "
            f"{SamplingParams.describe_ranges()}.",
            details,
        ) from exc
    output_format = fields.get("output_format") or "wav"
    if output_format not in OUTPUT_MEDIA_TYPES:
        raise InvalidRequest(
            f"output_format must be one of {', '.join(OUTPUT_MEDIA_TYPES)}, got "
            f"{output_format[:20]!r}.",
            [{"loc": ["body", "output_format"], "msg": "unsupported value"}],
        )
    webhook_url = fields.get("webhook_url") or None
    return NormalizedInstruction.from_instruction(instruction), params, output_format, webhook_url


def _request_hash(
    upload: MultipartUpload,
    instruction: NormalizedInstruction,
    params: SamplingParams,
    output_format: str,
    webhook_url: str | None,
) -> str:
    canonical = json.dumps(
        {
            "file_sha256": upload.file_sha256,
            "instruction": instruction.text,
            "params": params.model_dump(),
            "output_format": output_format,
            "webhook_url": webhook_url,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def submit_edit(
    request: Request, context: ServiceContext, key: ApiKey, idempotency_key: str | None
) -> Submission:
    settings = context.settings
    idempotency_key = _check_idempotency_key(idempotency_key)
    check_content_length(request.headers.get("content-length"), settings.max_upload_bytes)
    await run_in_threadpool(context.store.admit, key.name, settings.rate_limit_per_minute,
                                    settings.max_queued_jobs_per_key, idempotency_key)
    upload = await receive_multipart(
        request.headers.get("content-type"),
        request.stream(),
        allowed_fields=FORM_FIELDS,
        max_file_bytes=settings.max_upload_bytes,
        tmp_dir=settings.data_dir / "tmp",
    )
    try:
        return await run_in_threadpool(
            _submit_upload, context, key, idempotency_key, upload, request.scope
        )
    finally:
        upload.cleanup()


def _submit_upload(
    context: ServiceContext,
    key: ApiKey,
    idempotency_key: str | None,
    upload: MultipartUpload,
    scope: MutableMapping[str, Any],
) -> Submission:
    """Validate, probe, store the input, create the job, send its message (one thread).

    """
    settings, store = context.settings, context.store
    try:
        instruction, params, output_format, webhook_url = _validate_fields(upload, context)
        request_hash = _request_hash(upload, instruction, params, output_format, webhook_url)
        if idempotency_key:
            existing = store.find_idempotent(key.name, idempotency_key, request_hash)
            if existing is not None:
                position = None
                if existing.state is JobState.queued:
                    # The first attempt may have created the job and then lost its message
                    # (store and broker failing together, answered 503). A second wake-up is
                    # harmless: `claim` runs a job once, extra messages are skipped.
                    enqueue_edit(context.celery, existing.id)
                    position = store.queue_position(existing.id)
                return Submission(existing, created=False, queue_position=position)
            # A retry whose key record expired since admission is a new submission after
            # all: it was rate-counted at admission, and `create` below applies the cap.
        if webhook_url:
            check_webhook_url(webhook_url, settings.webhook_allow_private)
        assert upload.file_path is not None
        info = probe_audio(upload.file_path, AudioLimits.from_settings(settings))

        job_id = uuid.uuid4().hex
        scope["musicedit.job_id"] = job_id
        if params.seed is None:  # shown in the job, so the result can be reproduced
            params = params.model_copy(update={"seed": seed_for_job(job_id)})
        job = EditJob(
            id=job_id,
            owner=key.name,
            instruction=instruction,
            params=params,
            output_format=output_format,
            webhook_url=webhook_url,
            input_key=input_key(job_id),
            input=InputAudio(
                format=info.format,
                sample_rate=info.sample_rate,
                channels=info.channels,
                duration_seconds=info.duration_seconds,
                size_bytes=upload.file_size,
            ),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        _store_input(context, job, upload)
    finally:
        upload.cleanup()

    try:
        stored = store.create_with_position(
            job, max_queued_per_owner=settings.max_queued_jobs_per_key
        )
    except BaseException:
        _delete_quietly(context, job.input_key)
        raise
    if not stored.created:  # lost an idempotency race: the other request's job stands
        _delete_quietly(context, job.input_key)
        return Submission(stored.job, created=False, queue_position=stored.queue_position)
    try:
        enqueue_edit(context.celery, stored.job.id)
    except MusiceditError:
        _withdraw(context, stored.job)
        raise
    context.metrics.jobs.labels(JobState.queued.value).inc()
    context.metrics.upload_bytes.observe(upload.file_size)
    log_event(log, "job_submitted", job_id=stored.job.id, key_name=key.name,
              instruction=instruction.text, input_seconds=round(info.duration_seconds, 3),
              input_format=info.format, file_name=upload.file_name)
    return Submission(stored.job, created=True, queue_position=stored.queue_position)


def _store_input(context: ServiceContext, job: EditJob, upload: MultipartUpload) -> None:
    assert upload.file_path is not None
    with upload.file_path.open("rb") as source:
        context.storage.put_file(
            job.input_key,
            source,
            max_bytes=context.settings.max_upload_bytes,
            content_type=MEDIA_TYPES[job.input.format],
            metadata={"job-id": job.id, "format": job.input.format.lower()},
            sha256=upload.file_sha256,  # hashed while the upload streamed in
        )


def _delete_quietly(context: ServiceContext, key: str) -> None:
    try:
        context.storage.delete(key)
    except MusiceditError as exc:
        log_event(log, "input_delete_failed", logging.WARNING, object_key=key,
                  error=type(exc).__name__)


def _withdraw(context: ServiceContext, job: EditJob) -> None:
    """The message could not be sent: delete the job and its input (nothing queued)."""
    try:
        context.store.discard(job.id)
    except MusiceditError as exc:
        log_event(log, "withdraw_failed", logging.WARNING, job_id=job.id, error=type(exc).__name__)
    _delete_quietly(context, job.input_key)
