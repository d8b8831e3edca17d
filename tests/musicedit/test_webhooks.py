"""Webhook signing, URL policy and delivery to a real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from local_stack import WebhookReceiver
from musicedit.errors import WebhookUrlRejected
from musicedit.jobs import EditJob, InputAudio, JobState, NormalizedInstruction, WebhookEvent
from musicedit.settings import Settings, webhook_secret_from_api_key
from musicedit.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    check_webhook_url,
    sign,
    verify,
)


@pytest.fixture
def receiver_factory():
    made = []

    def make(statuses=()):
        made.append(WebhookReceiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def finished_job() -> EditJob:
    return EditJob(
        id="job123", owner="alice", state=JobState.succeeded,
        instruction=NormalizedInstruction(operation="add", stem="Drums",
                                          text="Music piece. Instruct: Add Drums."),
        input_key="inputs/job123", result_key="results/job123.wav",
        input=InputAudio(format="WAV", sample_rate=32000, channels=1, duration_seconds=1.0,
                         size_bytes=64000),
    )


def test_sign_and_verify():
    body = b'{"event": "edit.succeeded"}'
    header = sign(body, "secret", timestamp=1_800_000_000)
    assert header.startswith("t=1800000000,v1=")
    assert verify(body, header, "secret", now=1_800_000_010)
    assert not verify(body + b" ", header, "secret", now=1_800_000_010)
    assert not verify(body, header, "other", now=1_800_000_010)
    assert not verify(body, header, "secret", now=1_800_000_000 + 301)  # replay window
    assert not verify(body, "garbage", "secret")


def test_delivery_is_signed_with_the_keys_webhook_secret(receiver_factory):
    receiver = receiver_factory()
    settings = Settings(api_keys="alice:alice-secret-key", webhook_allow_private=True)
    secret = settings.webhook_secret_for("alice")
    # the key's owner derives the same secret from the API key it already has
    assert secret == webhook_secret_from_api_key("alice-secret-key")
    body = WebhookEvent.for_job(finished_job(), "http://gw").model_dump_json().encode()
    sender = WebhookSender.from_settings(settings)
    assert sender.send(receiver.url, body, secret, job_id="job123")
    headers, received = receiver.received[0]
    assert received == body
    secret = webhook_secret_from_api_key("alice-secret-key")
    assert verify(received, headers[SIGNATURE_HEADER.lower()], secret)
    event = json.loads(received)
    assert event["event"] == "edit.succeeded" and event["job"]["id"] == "job123"
    assert event["job"]["audio_url"] == "http://gw/v1/edits/job123/audio"
    assert "result_key" not in event["job"] and "owner" not in event["job"]


def test_every_attempt_carries_a_timestamp_header_the_signature_covers(receiver_factory):
    """The documented recipe, without this package: HMAC-SHA256 of "{timestamp}.{body}" with
    the key's webhook secret equals the signature's v1; the timestamp is fresh."""
    receiver = receiver_factory([503, 200])
    secret = webhook_secret_from_api_key("alice-secret-key")
    sender = WebhookSender(timeout_seconds=2, retries=1, backoff_seconds=0, allow_private=True)
    assert sender.send(receiver.url, b'{"event": "edit.canceled"}', secret, job_id="j")
    assert len(receiver.received) == 2
    for headers, body in receiver.received:
        timestamp = headers[TIMESTAMP_HEADER.lower()]
        assert abs(time.time() - int(timestamp)) < 60
        fields = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER.lower()].split(","))
        assert fields["t"] == timestamp  # the signature format is unchanged: t=...,v1=...
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                            hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, fields["v1"])
        assert verify(body, headers[SIGNATURE_HEADER.lower()], secret)


def test_retries_5xx_with_backoff_then_delivers(receiver_factory):
    receiver = receiver_factory([500, 503, 200])
    sleeps: list[float] = []
    sender = WebhookSender(timeout_seconds=2, retries=5, backoff_seconds=0.5, allow_private=True,
                           sleep=sleeps.append)
    assert sender.send(receiver.url, b"{}", "s", job_id="j")
    assert len(receiver.received) == 3 and sleeps == [0.5, 1.0]


def test_gives_up_after_retries_and_does_not_retry_4xx(receiver_factory):
    failing = receiver_factory([500] * 10)
    sender = WebhookSender(timeout_seconds=2, retries=2, backoff_seconds=0, allow_private=True)
    assert not sender.send(failing.url, b"{}", "s", job_id="j")
    assert len(failing.received) == 3
    gone = receiver_factory([410])
    assert not sender.send(gone.url, b"{}", "s", job_id="j")
    assert len(gone.received) == 1


def test_private_receivers_are_refused_unless_allowed(receiver_factory):
    receiver = receiver_factory()
    sender = WebhookSender(timeout_seconds=2, retries=3, backoff_seconds=0, allow_private=False)
    assert not sender.send(receiver.url, b"{}", "s", job_id="j")
    assert receiver.received == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://localhost/x", "http://[::1]/x", "http://10.0.0.8/x",
    "http://192.168.1.1/x", "http://172.16.0.1/x", "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:127.0.0.1]/x", "http://0.0.0.0/x", "http://100.64.0.1/x",
    "file:///etc/passwd", "gopher://x/", "http://user:pw@93.184.216.34/x", "not a url",
])
def test_url_policy_refuses(url):
    with pytest.raises(WebhookUrlRejected):
        check_webhook_url(url, allow_private=False)


def test_url_policy_allows_public_addresses_and_private_when_configured():
    assert check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    assert check_webhook_url("http://127.0.0.1:9000/hook", allow_private=True)
