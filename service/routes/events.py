"""`/v1/edits/{job_id}/events`: a job's state, queue position and progress as Server-Sent
Events, and the stream tokens a browser opens it with.

The wire format is `musicedit.event_stream`; the streams are fed by the process's one
`service.job_watch.JobWatch` poller, so an open stream holds no thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from musicedit.event_stream import (
    HEARTBEAT,
    MEDIA_TYPE,
    JobEvent,
    event_id,
    stream_preamble,
)
from musicedit.jobs import EditJobView
from musicedit.settings import ApiKey
from service.dependencies import CallerKey, Context, base_url, bearer, get_api_key
from service.job_watch import JobWatch, Snapshot
from service.problems import problem_responses
from service.stream_tokens import issue_token, verify_token

router = APIRouter(prefix="/v1/edits", tags=["events"])

_STREAM_EXAMPLE = (
    "retry: 1000\n\n"
    "id: 5d1c0e7a9b2f4c31\nevent: job\ndata: {\"id\": \"3f0c...\", \"status\": \"queued\", "
    "\"queue_position\": 2, ...}\n\n"
    ": keep-alive\n\n"
    "id: 0b9e4d2a7c1f6e38\nevent: job\ndata: {\"id\": \"3f0c...\", \"status\": \"running\", "
    "\"progress\": {\"frames_done\": 120, \"frames_total\": 500, \"fraction\": 0.24}, ...}\n\n"
    "id: e4a1c9f07d3b2865\nevent: end\ndata: {\"id\": \"3f0c...\", \"status\": \"succeeded\", "
    "\"audio_url\": \"...\", ...}\n\n"
)


class StreamTokenView(BaseModel):
    token: str = Field(description="Pass as `?token=` to the events URL; opens only this "
                       "job's stream, until `expires_at`.")
    expires_at: int = Field(description="Unix time after which the token opens no stream "
                            "(a stream opened before goes on).")
    events_url: str = Field(description="The job's events URL with the token, for "
                            "`new EventSource(events_url)`.")


def stream_caller(
    request: Request,
    job_id: str,
    context: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[str | None, Query(
        description="A stream token (`POST .../events/token`), for clients that cannot send "
        "`Authorization` (a browser's `EventSource`). Never put the API key here.")] = None,
) -> ApiKey:
    """The key from `Authorization: Bearer`, else from a stream token for this job."""
    if credentials is not None or token is None:
        return get_api_key(request, context, credentials)
    key = verify_token(token, job_id, context.settings, time.time())
    request.scope["musicedit.key_name"] = key.name
    return key


@router.post(
    "/{job_id}/events/token",
    response_model=StreamTokenView,
    summary="Get a stream token for a browser's EventSource",
    responses=problem_responses(401, 404, 503),
)
async def create_stream_token(
    request: Request, job_id: str, context: Context, key: CallerKey
) -> StreamTokenView:
    """A short-lived token that opens this job's event stream without the API key
    (`EventSource` cannot send headers, and a key must never be in a URL)."""
    request.scope["musicedit.job_id"] = job_id
    await run_in_threadpool(context.store.get, job_id, key.name)  # 404 for another key's job
    token = issue_token(key, job_id, context.settings.stream_token_seconds, time.time())
    url = f"{base_url(request, context.settings)}/v1/edits/{job_id}/events?token={token.token}"
    return StreamTokenView(token=token.token, expires_at=token.expires_at, events_url=url)


@router.get(
    "/{job_id}/events",
    summary="Follow a job: state, queue position and progress as Server-Sent Events",
    response_class=StreamingResponse,
    responses={
        200: {"description": "`job` events while the job is queued or running, one `end` "
              "event, then the stream closes. Data: the job as `GET /v1/edits/{id}` shows "
              "it. Lines starting with `:` are heartbeats.",
              "content": {MEDIA_TYPE: {"example": _STREAM_EXAMPLE}}},
        204: {"description": "`Last-Event-ID` is the job's `end` event: nothing more to send."},
        **problem_responses(401, 404, 503),
    },
)
async def follow_edit(
    request: Request,
    job_id: str,
    context: Context,
    key: Annotated[ApiKey, Depends(stream_caller)],
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", description="Resume after this event (sent by `EventSource` "
        "when it reconnects).")] = None,
    resume_after: Annotated[str | None, Query(
        description="`Last-Event-ID` for a client that cannot set it (a new EventSource); "
        "the header wins.")] = None,
) -> Response:
    """Authenticate with `Authorization: Bearer <key>` or `?token=<stream token>`."""
    request.scope["musicedit.job_id"] = job_id
    job = await run_in_threadpool(context.store.get, job_id, key.name)
    resumed = last_event_id or resume_after
    if job.state.terminal and resumed == event_id(EditJobView.from_job(job, "")):
        return Response(status_code=204)
    stream = _job_events(context.job_watch, job_id, base_url(request, context.settings),
                         resumed, context.settings.events_heartbeat_seconds)
    return StreamingResponse(stream, media_type=MEDIA_TYPE, headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _job_events(watch: JobWatch, job_id: str, base: str, last_sent: str | None,
                      heartbeat_seconds: float) -> AsyncIterator[bytes]:
    """The stream: each new state of the job once, heartbeats while nothing changes, the
    `end` event last."""
    watcher = watch.subscribe(job_id)
    try:
        yield stream_preamble()
        while True:
            try:
                await asyncio.wait_for(watcher.changed.wait(), heartbeat_seconds)
            except TimeoutError:
                yield HEARTBEAT
                continue
            watcher.changed.clear()
            if watcher.latest is None:  # deleted (retention) while followed
                return
            event = _event(watcher.latest, base)
            if event.id != last_sent:
                yield event.encode()
                last_sent = event.id
            if event.event == "end":
                return
    finally:
        watch.unsubscribe(watcher)


def _event(snapshot: Snapshot, base: str) -> JobEvent:
    job, position = snapshot
    return JobEvent.of(EditJobView.from_job(job, base, position))
