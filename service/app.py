"""The FastAPI gateway: `create_app(settings)` wires settings, job store, storage and queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from celery import Celery
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from musicedit.job_store import BaseJobStore, make_job_store
from musicedit.logs import log_event
from musicedit.queue import make_celery
from musicedit.retention import sweep_expired
from musicedit.settings import Settings, get_settings
from musicedit.storage import ObjectStorage, make_storage
from musicedit.webhooks import WebhookNotifier
from service.dependencies import ServiceContext
from service.job_watch import JobWatch
from service.metrics import GatewayMetrics, RequestMetricsMiddleware
from service.problems import install_problem_handlers
from service.routes import audio, capabilities, edits, events, operations, page, webhooks

log = logging.getLogger("musicedit.service")

DESCRIPTION = """
Text-instructed music editing (Instruct-MusicGen). Upload a clip with an instruction such as
"Add drums", "Remove the bass" or "Only piano"; poll the job or receive a signed webhook; then
download the edited audio. Authenticate with `Authorization: Bearer <API key>`.
Errors are RFC 9457 `application/problem+json`. Follow a job live with
`GET /v1/edits/{id}/events` (Server-Sent Events).

**Try it in a browser: [the edit page](/).**
"""


async def _retention_loop(context: ServiceContext) -> None:
    while True:
        await asyncio.sleep(context.settings.retention_sweep_interval_seconds)
        try:
            await run_in_threadpool(sweep_expired, context.store, context.storage)
        except Exception as exc:  # keep sweeping after a transient outage
            log_event(log, "retention_sweep_failed", logging.WARNING, error=type(exc).__name__)


def create_app(
    settings: Settings | None = None,
    *,
    store: BaseJobStore | None = None,
    storage: ObjectStorage | None = None,
    celery: Celery | None = None,
) -> FastAPI:
    """Build the gateway. Components default to the ones named by `settings`."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = store or make_job_store(settings)
    context = ServiceContext(
        settings=settings,
        store=store,
        storage=storage or make_storage(settings),
        celery=celery or make_celery(settings),
        metrics=GatewayMetrics(queue_size=store.count_queued, jobs_by_state=store.count_by_state),
        notifier=WebhookNotifier(settings),
        job_watch=JobWatch(store, settings.events_poll_interval_seconds),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_retention_loop(context))
        log_event(log, "gateway_started", storage=settings.storage_backend,
                  job_store=type(context.store).__name__)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await context.job_watch.close()
            await run_in_threadpool(context.notifier.close)

    app = FastAPI(
        title="musicedit",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.context = context
    install_problem_handlers(app)
    app.include_router(edits.router)
    app.include_router(audio.router)
    app.include_router(events.router)
    app.include_router(capabilities.router)
    app.include_router(operations.router)
    app.include_router(page.router)
    app.mount(page.ASSETS_PATH, page.page_assets(), name="page")
    app.webhooks.include_router(webhooks.router)
    app.add_middleware(RequestMetricsMiddleware, metrics=context.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    return app
