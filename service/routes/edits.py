"""`/v1/edits`: submit, list, read and cancel edit jobs. Thin: the submit workflow is
`service.submissions`, a cancel's side effects are `service.cancellation`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from musicedit.jobs import EditJob, EditJobList, EditJobView, JobState
from service.cancellation import cancel_job
from service.dependencies import CallerKey, Context, ServiceContext, base_url
from service.edit_form import openapi_request_body
from service.problems import problem_responses
from service.routes.examples import CANCEL_EXAMPLES, JOB_EXAMPLE, LIST_EXAMPLE
from service.submissions import submit_edit

router = APIRouter(prefix="/v1/edits", tags=["edits"])


def job_view(
    request: Request, context: ServiceContext, job: EditJob, position: int | None = None
) -> EditJobView:
    """The job as the API shows it, with links on the caller's base URL."""
    return EditJobView.from_job(job, base_url(request, context.settings), position)


@router.post(
    "",
    status_code=202,
    response_model=EditJobView,
    summary="Submit an edit",
    openapi_extra={"requestBody": openapi_request_body()},
    responses={
        202: {"description": "Accepted (or the earlier job for a repeated Idempotency-Key)",
              "content": {"application/json": {"example": JOB_EXAMPLE}}},
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
    view = job_view(request, context, submission.job, submission.queue_position)
    response.headers["Location"] = view.status_url
    if not submission.created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get(
    "",
    response_model=EditJobList,
    summary="List your jobs, newest first",
    responses={200: {"content": {"application/json": {"example": LIST_EXAMPLE}}},
               **problem_responses(401, 422, 503)},
)
async def list_edits(
    request: Request,
    context: Context,
    key: CallerKey,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[
        int | None, Query(ge=1, description="`next_cursor` of the previous page")] = None,
) -> EditJobList:
    def page_with_positions() -> tuple[list[EditJob], list[int | None]]:
        jobs = context.store.list_jobs(key.name, limit + 1, before)
        # one rank lookup per queued job: at most MAX_QUEUED_JOBS_PER_KEY of them
        return jobs, [context.store.queue_position(job.id) if job.state is JobState.queued
                      else None for job in jobs[:limit]]

    jobs, positions = await run_in_threadpool(page_with_positions)
    page = jobs[:limit]
    return EditJobList(
        items=[job_view(request, context, job, position)
               for job, position in zip(page, positions, strict=True)],
        next_cursor=page[-1].seq if len(jobs) > limit else None,
    )


@router.get(
    "/{job_id}",
    response_model=EditJobView,
    summary="Job status",
    responses={200: {"content": {"application/json": {"example": JOB_EXAMPLE}}},
               **problem_responses(401, 404, 503)},
)
async def get_edit(request: Request, job_id: str, context: Context, key: CallerKey) -> EditJobView:
    request.scope["musicedit.job_id"] = job_id
    job = await run_in_threadpool(context.store.get, job_id, key.name)
    position = None
    if job.state is JobState.queued:
        position = await run_in_threadpool(context.store.queue_position, job.id)
    return job_view(request, context, job, position)


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=EditJobView,
    summary="Cancel a queued or running job",
    responses={
        202: {"description": "Canceled (queued job) or cancel requested (running job)",
              "content": {"application/json": {"examples": CANCEL_EXAMPLES}}},
        **problem_responses(401, 404, 409, 503),
    },
)
async def cancel_edit(
    request: Request, job_id: str, context: Context, key: CallerKey
) -> EditJobView:
    """Queued jobs are canceled at once; running ones stop at the worker's next step."""
    request.scope["musicedit.job_id"] = job_id
    job = await run_in_threadpool(cancel_job, context, job_id, key.name)
    return job_view(request, context, job)
