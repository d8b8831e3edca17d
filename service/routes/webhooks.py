"""The webhooks musicedit sends, documented in the OpenAPI schema's `webhooks` section.

Nothing is served here: these operations describe what your application receives
(`musicedit.webhooks` sends them).
"""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Header

from musicedit.jobs import WebhookEvent, WebhookEventName
from musicedit.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER
from service.routes.examples import WEBHOOK_EXAMPLE

router = APIRouter()

_DESCRIPTION = """
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


def _document(event: str) -> None:
    @router.post(
        event,
        summary=f"{event}: a job {event.split('.')[1]}",
        description=_DESCRIPTION,
        openapi_extra={"requestBody": {"content": {"application/json": {
            "example": {**WEBHOOK_EXAMPLE, "event": event}}}}},
        responses={200: {"description": "Received (any 2xx)."}},
    )
    def receive(
        body: WebhookEvent,
        signature: Annotated[str, Header(alias=SIGNATURE_HEADER,
                                         description="`t=<unix time>,v1=<HMAC-SHA256 hex>`")],
        timestamp: Annotated[str, Header(alias=TIMESTAMP_HEADER,
                                         description="Unix time of this delivery attempt "
                                         "(the signature's `t`).")],
    ) -> None:
        """Implemented by your application, not by musicedit."""


for _event in get_args(WebhookEventName):
    _document(_event)
