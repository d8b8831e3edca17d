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

from musicedit.errors import Unauthorized
from musicedit.job_store import BaseJobStore
from musicedit.settings import ApiKey, Settings
from musicedit.storage import ObjectStorage
from musicedit.webhooks import WebhookNotifier
from service.metrics import GatewayMetrics


@dataclass
class ServiceContext:
    settings: Settings
    store: BaseJobStore
    storage: ObjectStorage
    celery: Celery
    metrics: GatewayMetrics
    notifier: WebhookNotifier


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context


def get_settings(context: Annotated[ServiceContext, Depends(get_context)]) -> Settings:
    return context.settings


def get_api_key(
    request: Request, context: Annotated[ServiceContext, Depends(get_context)]
) -> ApiKey:
    """The caller's key from `Authorization: Bearer <key>` (hash compared in constant time)."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
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
