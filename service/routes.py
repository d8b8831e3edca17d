"""HTTP routes: thin; the work lives in `submissions.py` and the shared `musicedit` package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from musicedit.errors import JobNotFinished, MusiceditError
from musicedit.jobs import EditJob, EditJobList, EditJobView, JobState, WebhookEvent
from musicedit.queue import queue_depth
from service.dependencies import CallerKey, Context, base_url
from service.problems import problem_responses
from service.submissions import submit_edit

edits = APIRouter(prefix="/v1/edits", tags=["edits"])
health = APIRouter(tags=["operations"])

_JOB_EXAMPLE = {
    "id": "3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c",
    "status": "queued",
    "instruction": {"operation": "add", "stem": "Drums", "text": "Music piece. Instruct: Add Drums."},
    "params": {"seed": 42, "top_k": 100, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0},
    "output_format": "wav",
    "input": {"format": "WAV", "sample_rate": 44100, "channels": 2, "duration_seconds": 10.0,
              "size_bytes": 1764044},
    "progress": {"frames_done": 0, "frames_total": 0},
    "queue_position": 0,
    "timings": {"created_at": 1766000000.0, "started_at": None, "finished_at": None},
    "attempts": 0,
    "error": None,
    "cancel_requested": False,
    "webhook_url": None,
    "status_url": "http://127.0.0.1:8000/v1/edits/3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c",
    "audio_url": None,
}

_SUCCEEDED_EXAMPLE = {
    **_JOB_EXAMPLE,
    "id": "9b1d7e3c5a2f4e6d8c0b1a3e5f7d9c2b",
    "status": "succeeded",
    "progress": {"frames_done": 500, "frames_total": 500},
    "queue_position": None,
    "timings": {"created_at": 1766000000.0, "started_at": 1766000001.5,
                "finished_at": 1766000004.2},
    "attempts": 1,
    "status_url": "http://127.0.0.1:8000/v1/edits/9b1d7e3c5a2f4e6d8c0b1a3e5f7d9c2b",
    "audio_url": "http://127.0.0.1:8000/v1/edits/9b1d7e3c5a2f4e6d8c0b1a3e5f7d9c2b/audio",
}

_LIST_EXAMPLE = {"items": [_JOB_EXAMPLE, _SUCCEEDED_EXAMPLE], "next_cursor": 41}

_CANCEL_EXAMPLES = {
    "canceled": {
        "summary": "A queued job, canceled at once",
        "value": {**_JOB_EXAMPLE, "status": "canceled", "queue_position": None,
                  "timings": {"created_at": 1766000000.0, "started_at": None,
                              "finished_at": 1766000002.0}},
    },
    "cancel_requested": {
        "summary": "A running job, stopped at the worker's next decode step",
        "value": {**_JOB_EXAMPLE, "status": "running", "queue_position": None,
                  "progress": {"frames_done": 120, "frames_total": 500},
                  "timings": {"created_at": 1766000000.0, "started_at": 1766000001.5,
                              "finished_at": None},
                  "attempts": 1, "cancel_requested": True},
    },
}

_SUBMIT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "instruction"],
                "additionalProperties": False,
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "WAV, FLAC, OGG or MP3; format is read from the bytes."},
                    "instruction": {"type": "string", "maxLength": 200,
                                    "example": "Add drums",
                                    "description": "add/remove/extract a stem, e.g. 'Remove the bass'."},
                    "seed": {"type": "integer", "minimum": 0},
                    "top_k": {"type": "integer", "minimum": 0, "maximum": 2048, "default": 100},
                    "top_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0},
                    "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 10,
                                    "default": 1.0},
                    "cfg_coef": {"type": "number", "minimum": 0, "maximum": 20, "default": 3.0},
                    "output_format": {"type": "string", "enum": ["wav", "flac"], "default": "wav"},
                    "webhook_url": {"type": "string", "format": "uri",
                                    "example": "https://example.com/hooks/musicedit"},
                },
            }
        }
    },
}


def _view(
    request: Request, context: Context, job: EditJob, position: int | None = None
) -> EditJobView:
    return EditJobView.from_job(job, base_url(request, context.settings), position)


@edits.post(
    "",
    status_code=202,
    response_model=EditJobView,
    summary="Submit an edit",
    openapi_extra={"requestBody": _SUBMIT_BODY},
    responses={
        202: {"description": "Accepted (or the earlier job for a repeated Idempotency-Key)",
              "content": {"application/json": {"example": _JOB_EXAMPLE}}},
        **problem_responses(400, 401, 409, 413, 415, 422, 429, 503),
    },
)
async def create_edit(
    request: Request,
    response: Response,
    context: Context,
    key: CallerKey,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> EditJobView:
    """Upload a clip and an instruction; poll `status_url` or wait for the webhook."""
    submission = await submit_edit(request, context, key, idempotency_key)
    view = _view(request, context, submission.job, submission.queue_position)
    response.headers["Location"] = view.status_url
    if not submission.created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@edits.get(
    "",
    response_model=EditJobList,
    summary="List your jobs, newest first",
    responses={200: {"content": {"application/json": {"example": _LIST_EXAMPLE}}},
               **problem_responses(401, 422, 503)},
)
async def list_edits(
    request: Request,
    context: Context,
    key: CallerKey,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[int | None, Query(ge=1, description="`next_cursor` of the previous page")] = None,
) -> EditJobList:
    def page_with_positions() -> tuple[list[EditJob], list[int | None]]:
        jobs = context.store.list_jobs(key.name, limit + 1, before)
        # one rank lookup per queued job: at most MAX_QUEUED_JOBS_PER_KEY of them
        return jobs, [context.store.queue_position(job.id) if job.state is JobState.queued
                      else None for job in jobs[:limit]]

    jobs, positions = await run_in_threadpool(page_with_positions)
    page = jobs[:limit]
    return EditJobList(
        items=[_view(request, context, job, position) for job, position in zip(page, positions)],
        next_cursor=page[-1].seq if len(jobs) > limit else None,
    )


@edits.get(
    "/{job_id}",
    response_model=EditJobView,
    summary="Job status",
    responses={200: {"content": {"application/json": {"example": _JOB_EXAMPLE}}},
               **problem_responses(401, 404, 503)},
)
async def get_edit(request: Request, job_id: str, context: Context, key: CallerKey) -> EditJobView:
    request.scope["musicedit.job_id"] = job_id
    job = await run_in_threadpool(context.store.get, job_id, key.name)
    position = None
    if job.state is JobState.queued:
        position = await run_in_threadpool(context.store.queue_position, job.id)
    return _view(request, context, job, position)


@edits.get(
    "/{job_id}/audio",
    summary="Download the result",
    description="The edited audio in the job's `output_format`: mono, 32 kHz (the model's "
    "output rate), 16-bit, as long as the input, whatever the input's rate and channels.",
    response_class=Response,
    responses={
        200: {"description": "The audio (local storage)",
              "content": {"audio/wav": {}, "audio/flac": {}}},
        302: {"description": "Redirect to a short-lived presigned URL (S3 storage)"},
        **problem_responses(401, 404, 409, 503),
    },
)
async def get_edit_audio(
    request: Request, job_id: str, context: Context, key: CallerKey
) -> Response:
    request.scope["musicedit.job_id"] = job_id
    job = await run_in_threadpool(context.store.get, job_id, key.name)
    if job.state is not JobState.succeeded or job.result_key is None:
        hint = {
            JobState.queued: "poll its status_url until it succeeds",
            JobState.running: "poll its status_url until it succeeds",
            JobState.failed: "see its error and resubmit",
            JobState.canceled: "resubmit it",
        }.get(job.state, "resubmit it")
        raise JobNotFinished(f"Job {job.id} is {job.state.value} and has no result; {hint}.")
    url = context.storage.presigned_get_url(job.result_key, context.settings.presign_expiry_seconds)
    if url is not None:
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    path = context.storage.local_path(job.result_key)
    if path is None or not path.is_file():
        raise JobNotFinished(f"The result of job {job.id} is no longer stored; resubmit it.")
    return FileResponse(
        path,
        media_type=f"audio/{job.output_format}",
        filename=f"{job.id}.{job.output_format}",
        headers={"Cache-Control": "no-store"},
    )


@edits.delete(
    "/{job_id}",
    status_code=202,
    response_model=EditJobView,
    summary="Cancel a queued or running job",
    responses={
        202: {"description": "Canceled (queued job) or cancel requested (running job)",
              "content": {"application/json": {"examples": _CANCEL_EXAMPLES}}},
        **problem_responses(401, 404, 409, 503),
    },
)
async def cancel_edit(
    request: Request, job_id: str, context: Context, key: CallerKey
) -> EditJobView:
    """Queued jobs are canceled at once; running ones stop at the worker's next step."""
    request.scope["musicedit.job_id"] = job_id
    job = await run_in_threadpool(context.store.request_cancel, job_id, key.name)
    if job.state is JobState.canceled:
        # no worker will see this job again, so its `edit.canceled` webhook goes from here
        # (sent from the notifier's threads; the answer does not wait for it)
        context.notifier.notify(job)
        context.metrics.jobs.labels(JobState.canceled.value).inc()
        try:
            await run_in_threadpool(context.storage.delete, job.input_key)
        except MusiceditError:
            pass  # the retention sweep deletes it later
    return _view(request, context, job)


@health.get("/healthz", summary="Process alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="Job store, storage, broker reachable and at least one live worker",
    responses={503: {"description": "Not ready; `checks` says what is missing"}},
)
async def readyz(context: Context) -> JSONResponse:
    settings = context.settings
    checks: dict[str, str] = {}

    def probe(name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            checks[name] = "ok"
        except Exception as exc:  # readiness reports every failure, never raises
            checks[name] = f"unavailable: {type(exc).__name__}"

    await run_in_threadpool(probe, "job_store", context.store.ping)
    await run_in_threadpool(probe, "storage", context.storage.check)
    await run_in_threadpool(probe, "broker", lambda: queue_depth(context.celery))
    workers: list[dict] = []

    def count_workers() -> None:
        workers.extend(context.store.live_workers(settings.worker_heartbeat_ttl_seconds))
        if not workers:
            raise LookupError("no worker heartbeat")

    await run_in_threadpool(probe, "workers", count_workers)
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "live_workers": len(workers)}
    headers = {} if ready else {"Retry-After": "5"}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@health.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(context: Context) -> Response:
    payload = await run_in_threadpool(generate_latest, context.metrics.registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)


# --- webhooks (documented in the OpenAPI schema's `webhooks`; sent by musicedit.webhooks) ----
webhooks = APIRouter()
_WEBHOOK_EXAMPLE = {"event": "edit.succeeded",
                    "job": {**_SUCCEEDED_EXAMPLE,
                            "webhook_url": "https://app.example.com/hooks/musicedit"}}
_WEBHOOK_DESCRIPTION = """
POSTed to the job's `webhook_url` once, when it reaches a final state: `edit.succeeded` and
`edit.failed` by the worker that ran it, `edit.canceled` by the worker that stopped it or, for
a job canceled while queued, by the gateway. The body is the job as `GET status_url` shows it.

Verify it before trusting it: `X-Musicedit-Signature` is `t=<unix time>,v1=<hex>` where hex is
`HMAC-SHA256(secret, "<t>." + raw body)` and `secret` is your API key's webhook secret,
`hex(HMAC-SHA256(key=api_key, msg="musicedit-webhook-v1"))` (`musicedit.webhooks.verify` does
all of it, including a 5-minute timestamp tolerance against replays). Answer `2xx` quickly;
network errors, `429` and `5xx` are retried with backoff, other `4xx` are not. A retry after a
timeout can deliver twice (deduplicate on `job.id` + `event`), and a webhook is a fast path,
not the record: the job's status URL always has the final state.
"""


def _webhook_doc(event: str):
    @webhooks.post(
        event,
        summary=f"{event}: a job {event.split('.')[1]}",
        description=_WEBHOOK_DESCRIPTION,
        openapi_extra={"requestBody": {"content": {"application/json": {
            "example": {**_WEBHOOK_EXAMPLE, "event": event}}}}},
        responses={200: {"description": "Received (any 2xx)."}},
    )
    def receive(
        body: WebhookEvent,
        signature: Annotated[str, Header(alias="X-Musicedit-Signature",
                                         description="`t=<unix time>,v1=<HMAC-SHA256 hex>`")],
        timestamp: Annotated[str, Header(alias="X-Musicedit-Timestamp",
                                         description="Unix time of this delivery attempt "
                                         "(the signature's `t`).")],
    ) -> None:
        """Implemented by your application, not by musicedit."""

    return receive


for _event in ("edit.succeeded", "edit.failed", "edit.canceled"):
    _webhook_doc(_event)
