"""`/v1/edits/{job_id}/audio`: the result of a succeeded job."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from musicedit.errors import JobNotFinished
from musicedit.jobs import OUTPUT_MEDIA_TYPES, JobState
from service.dependencies import CallerKey, Context
from service.problems import problem_responses

router = APIRouter(prefix="/v1/edits", tags=["edits"])

# What to do about a job that has no result, by its state.
_NO_RESULT_HINTS = {
    JobState.queued: "poll its status_url until it succeeds",
    JobState.running: "poll its status_url until it succeeds",
    JobState.failed: "see its error and resubmit",
    JobState.canceled: "resubmit it",
}


@router.get(
    "/{job_id}/audio",
    summary="Download the result",
    description="The edited audio in the job's `output_format`: mono, 32 kHz (the model's "
    "output rate), 16-bit, as long as the input, whatever the input's rate and channels.",
    response_class=Response,
    responses={
        200: {"description": "The audio (local storage)",
              "content": {media_type: {} for media_type in OUTPUT_MEDIA_TYPES.values()}},
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
        hint = _NO_RESULT_HINTS.get(job.state, "resubmit it")
        raise JobNotFinished(f"Job {job.id} is {job.state.value} and has no result; {hint}.")
    url = context.storage.presigned_get_url(job.result_key, context.settings.presign_expiry_seconds)
    if url is not None:
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    path = context.storage.local_path(job.result_key)
    if path is None or not path.is_file():
        raise JobNotFinished(f"The result of job {job.id} is no longer stored; resubmit it.")
    return FileResponse(
        path,
        media_type=OUTPUT_MEDIA_TYPES[job.output_format],
        filename=f"{job.id}.{job.output_format}",
        headers={"Cache-Control": "no-store"},
    )
