"""Operations endpoints: liveness, readiness and Prometheus metrics (no API key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from musicedit.errors import RETRY_AFTER_UNAVAILABLE
from musicedit.queue import queue_depth
from service.dependencies import Context

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Process alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
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
    workers: list[dict[str, Any]] = []

    def count_workers() -> None:
        workers.extend(context.store.live_workers(settings.worker_heartbeat_ttl_seconds))
        if not workers:
            raise LookupError("no worker heartbeat")

    await run_in_threadpool(probe, "workers", count_workers)
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks,
            "live_workers": len(workers)}
    headers = {} if ready else {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(context: Context) -> Response:
    payload = await run_in_threadpool(generate_latest, context.metrics.registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
