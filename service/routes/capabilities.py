"""`/v1/capabilities`: what an edit may ask for here, now (`musicedit.capabilities`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from musicedit.capabilities import Capabilities, build_capabilities
from service.dependencies import CallerKey, Context
from service.problems import problem_responses

router = APIRouter(prefix="/v1", tags=["capabilities"])


@router.get(
    "/capabilities",
    response_model=Capabilities,
    summary="Operations, stems, limits, sampling ranges and optional features",
    responses=problem_responses(401, 503),
)
async def get_capabilities(context: Context, key: CallerKey) -> Capabilities:
    """Reflects the live workers: a stem or operation no live worker serves is not listed
    (with no live worker, none is)."""
    workers = await run_in_threadpool(
        context.store.live_workers, context.settings.worker_heartbeat_ttl_seconds)
    return build_capabilities(context.settings, workers)
