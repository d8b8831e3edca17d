"""Everything routes need, injected: settings, the authenticated key, job store, storage, queue,
webhook notifier.

`ServiceContext` is built once per app by `create_app` and stored on `app.state`; tests can
build their own from real services.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from musicedit.errors import Unauthorized
from musicedit.job_store import BaseJobStore
from musicedit.settings import ApiKey, Settings
from musicedit.storage import ObjectStorage
from musicedit.webhooks import WebhookNotifier
from service.job_watch import JobWatch
from service.metrics import GatewayMetrics


@dataclass
class ServiceContext:
    settings: Settings
    store: BaseJobStore
    storage: ObjectStorage
    celery: Celery
    metrics: GatewayMetrics
    notifier: WebhookNotifier
    job_watch: JobWatch


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context


def get_settings(context: Annotated[ServiceContext, Depends(get_context)]) -> Settings:
    return context.settings


# Declares the scheme in the OpenAPI schema (`/docs` gets its "Authorize" button, generated
# clients send the key); errors stay ours (problem+json 401), hence auto_error=False.
bearer = HTTPBearer(
    scheme_name="ApiKey", bearerFormat="API key", auto_error=False,
    description="`Authorization: Bearer <API key>`; keys are set with `MUSICEDIT_API_KEYS`.",
)


def get_api_key(
    request: Request,
    context: Annotated[ServiceContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """The caller's key from `Authorization: Bearer <key>` (hash compared in constant time)."""
    secret = credentials.credentials.strip() if credentials is not None else ""
    if not secret:
        raise Unauthorized("Send your API key as `Authorization: Bearer <key>`.")
    if not context.settings.api_keys:
        raise Unauthorized(
            "No API keys are configured on this server; the operator must set MUSICEDIT_API_KEYS."
        )
    key = context.settings.authenticate(secret.strip())
    if key is None:
        raise Unauthorized("Unknown API key; check the key you send as `Authorization: Bearer`.")
    request.scope["musicedit.key_name"] = key.name
    return key


def base_url(request: Request, settings: Settings) -> str:
    """Base for links in responses: the configured public URL, else the request's own."""
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


Context = Annotated[ServiceContext, Depends(get_context)]
CallerKey = Annotated[ApiKey, Depends(get_api_key)]
