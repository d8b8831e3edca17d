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
import typing as tp
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from musicedit.audio_probe import MEDIA_TYPES, AudioLimits, probe_audio
from musicedit.errors import InvalidRequest, JobNotFinished, MusiceditError, ObjectNotFound
from musicedit.instructions import Instruction, normalize_edit
from musicedit.jobs import (
    OUTPUT_MEDIA_TYPES,
    OUTPUT_SAMPLE_RATE_MAX,
    OUTPUT_SAMPLE_RATE_MIN,
    EditJob,
    InputAudio,
    JobState,
    NormalizedInstruction,
    OutputFormat,
    OutputShape,
    SamplingParams,
    seed_for_job,
    time_range_in,
)
from musicedit.logs import log_event
from musicedit.queue import enqueue_edit, queue_for
from musicedit.routing import ENGINE_CHOICES, Engine, route
from musicedit.settings import ApiKey
from musicedit.storage import codes_key, input_key
from musicedit.webhooks import check_webhook_url
from service.dependencies import ServiceContext
from service.edit_form import FORM_FIELDS, OPTION_FIELDS, PARAM_FIELDS, EditOptions
from service.uploads import MultipartUpload, check_content_length, receive_multipart

log = logging.getLogger("musicedit.service")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
M = tp.TypeVar("M", bound=BaseModel)


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


@dataclass(frozen=True)
class EditFields:
    """A submission's form, validated (what needs the audio's duration is checked later)."""

    steps: tuple[Instruction, ...]
    engines: tuple[Engine, ...]
    params: SamplingParams
    options: EditOptions
    output_format: OutputFormat
    webhook_url: str | None
    source_job_id: str | None

    @property
    def instruction(self) -> NormalizedInstruction:
        return NormalizedInstruction.from_steps(self.steps, engines=self.engines)


def _validated(model: type[M], raw: dict[str, str], what: str, allowed: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = [
            {"loc": ["body", *map(str, err["loc"])], "msg": err["msg"]} for err in exc.errors()
        ]
        summary = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in details)
        raise InvalidRequest(f"Out-of-range or malformed {what}: {summary}. Allowed: {allowed}.",
                             details) from exc


def _validate_fields(upload: MultipartUpload, context: ServiceContext) -> EditFields:
    fields = {name: value.strip() for name, value in upload.fields.items()}
    source_job_id = fields.get("source_job_id") or None
    if (upload.file_path is None) == (source_job_id is None):
        raise InvalidRequest(
            "Send the audio as multipart field `file`, or `source_job_id` to edit the result of "
            "one of your jobs (one of the two, not both).",
            [{"loc": ["body", "file"], "msg": "exactly one of file and source_job_id"}],
        )
    if "instruction" not in fields:
        raise InvalidRequest(
            "The form has no `instruction` field; send e.g. instruction=Add drums.",
            [{"loc": ["body", "instruction"], "msg": "field required"}],
        )
    choice = fields.get("engine") or "auto"
    if choice not in ENGINE_CHOICES:
        raise InvalidRequest(
            f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {choice[:20]!r}.",
            [{"loc": ["body", "engine"], "msg": "unsupported value"}],
        )
    settings = context.settings
    steps = normalize_edit(upload.fields["instruction"], settings.instruction_stems)
    engines = route(steps, settings.engine_stems, choice)
    params = _validated(SamplingParams, {name: fields[name] for name in PARAM_FIELDS
                                         if fields.get(name, "") != ""},
                        "sampling parameters", SamplingParams.describe_ranges())
    options = _validated(EditOptions, {name: fields[name] for name in OPTION_FIELDS
                                       if fields.get(name, "") != ""},
                         "range or output options",
                         f"start_seconds >= 0, end_seconds > start_seconds, output_sample_rate "
                         f"{OUTPUT_SAMPLE_RATE_MIN}..{OUTPUT_SAMPLE_RATE_MAX}, output_channels 1 "
                         "or 2")
    output_format = fields.get("output_format") or "wav"
    if output_format not in OUTPUT_MEDIA_TYPES:
        raise InvalidRequest(
            f"output_format must be one of {', '.join(OUTPUT_MEDIA_TYPES)}, got "
            f"{output_format[:20]!r}.",
            [{"loc": ["body", "output_format"], "msg": "unsupported value"}],
        )
    webhook_url = fields.get("webhook_url") or None
    return EditFields(steps, engines, params, options, output_format, webhook_url,
                      source_job_id)


def _output_shape(options: EditOptions, audio: InputAudio) -> OutputShape | None:
    """The result's shape when it differs from the input's (None: the input's)."""
    rate = options.output_sample_rate or audio.sample_rate
    channels = options.output_channels or audio.channels
    if (rate, channels) == (audio.sample_rate, audio.channels):
        return None
    return OutputShape(sample_rate=rate, channels=channels)


def _request_hash(upload: MultipartUpload, fields: EditFields) -> str:
    canonical = json.dumps(
        {
            "file_sha256": upload.file_sha256 if upload.file_path is not None else None,
            "source_job_id": fields.source_job_id,
            "instruction": [step.text for step in fields.steps],
            "engines": list(fields.engines),
            "params": fields.params.model_dump(),
            "options": fields.options.model_dump(),
            "output_format": fields.output_format,
            "webhook_url": fields.webhook_url,
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
        fields = _validate_fields(upload, context)
        request_hash = _request_hash(upload, fields)
        if idempotency_key:
            existing = store.find_idempotent(key.name, idempotency_key, request_hash)
            if existing is not None:
                position = None
                if existing.state is JobState.queued:
                    # The first attempt may have created the job and then lost its message
                    # (store and broker failing together, answered 503). A second wake-up is
                    # harmless: `claim` runs a job once, extra messages are skipped.
                    enqueue_edit(context.celery, existing.id, queue_for(existing.instruction))
                    position = store.queue_position(existing.id)
                return Submission(existing, created=False, queue_position=position)
            # A retry whose key record expired since admission is a new submission after
            # all: it was rate-counted at admission, and `create` below applies the cap.
        if fields.webhook_url:
            check_webhook_url(fields.webhook_url, settings.webhook_allow_private)
        source = _source_job(context, key, fields.source_job_id) if fields.source_job_id else None
        if source is not None:
            assert source.result is not None
            audio = InputAudio(format=source.result.format, sample_rate=source.result.sample_rate,
                               channels=source.result.channels,
                               duration_seconds=source.result.duration_seconds,
                               size_bytes=source.result.size_bytes)
        else:
            assert upload.file_path is not None
            info = probe_audio(upload.file_path, AudioLimits.from_settings(settings))
            audio = InputAudio(format=info.format, sample_rate=info.sample_rate,
                               channels=info.channels, duration_seconds=info.duration_seconds,
                               size_bytes=upload.file_size)
        time_range = time_range_in(fields.options.start_seconds,
                                   fields.options.end_seconds, audio.duration_seconds)

        job_id = uuid.uuid4().hex
        scope["musicedit.job_id"] = job_id
        params = fields.params
        if params.seed is None:  # shown in the job, so the result can be reproduced
            params = params.model_copy(update={"seed": seed_for_job(job_id)})
        assert params.seed is not None
        codes = source.result.codes_key if source is not None and source.result else None
        job = EditJob(
            id=job_id,
            owner=key.name,
            instruction=fields.instruction.with_seed(params.seed),
            params=params,
            output_format=fields.output_format,
            webhook_url=fields.webhook_url,
            input_key=input_key(job_id),
            input=audio,
            input_codes_key=codes_key(input_key(job_id)) if codes else None,
            time_range=time_range,
            output=_output_shape(fields.options, audio),
            source_job_id=source.id if source is not None else None,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        if source is not None:
            _copy_source(context, source, job)
        else:
            _store_input(context, job, upload)
    finally:
        upload.cleanup()

    try:
        stored = store.create_with_position(
            job, max_queued_per_owner=settings.max_queued_jobs_per_key
        )
    except BaseException:
        _delete_inputs(context, job)
        raise
    if not stored.created:  # lost an idempotency race: the other request's job stands
        _delete_inputs(context, job)
        return Submission(stored.job, created=False, queue_position=stored.queue_position)
    try:
        enqueue_edit(context.celery, stored.job.id, queue_for(stored.job.instruction))
    except MusiceditError:
        _withdraw(context, stored.job)
        raise
    context.metrics.jobs.labels(JobState.queued.value).inc()
    context.metrics.upload_bytes.observe(upload.file_size)
    log_event(log, "job_submitted", job_id=stored.job.id, key_name=key.name,
              instruction=job.instruction.text, input_seconds=round(audio.duration_seconds, 3),
              input_format=audio.format, file_name=upload.file_name,
              source_job_id=job.source_job_id)
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


def _source_job(context: ServiceContext, key: ApiKey, source_job_id: str) -> EditJob:
    """The caller's succeeded job whose result is to be edited again.

    Raises:
        JobNotFound: no such job for this key (another key's job is reported the same way).
        JobNotFinished: the job has not succeeded (the message says its state).
        ObjectNotFound: its result is no longer stored (retention) or predates kept results.
    """
    source = context.store.get(source_job_id, key.name)
    if source.state is not JobState.succeeded:
        raise JobNotFinished(f"Job {source.id} is {source.state.value}; only the result of a "
                             "succeeded job can be edited again.")
    retention = context.settings.job_retention_seconds
    if (source.result is None or source.result_key is None
            or not context.storage.exists(source.result_key)):
        raise ObjectNotFound(f"The result of job {source.id} is no longer stored (results are "
                             f"kept {retention:g} s after the job ends); submit the audio file "
                             "instead.")
    return source


def _copy_source(context: ServiceContext, source: EditJob, job: EditJob) -> None:
    """The source's result (and its codes) become this job's input: a server-side copy, so
    that the source's retention cannot take the input from under a queued job."""
    assert source.result_key is not None and source.result is not None
    try:
        context.storage.copy(source.result_key, job.input_key)
        if source.result.codes_key and job.input_codes_key:
            context.storage.copy(source.result.codes_key, job.input_codes_key)
    except BaseException:
        _delete_inputs(context, job)
        raise


def _delete_inputs(context: ServiceContext, job: EditJob) -> None:
    for key in (job.input_key, job.input_codes_key):
        if key:
            _delete_quietly(context, key)


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
    _delete_inputs(context, job)
