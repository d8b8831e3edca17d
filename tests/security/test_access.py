"""Who can see what: API keys compared with every configured key in constant time, key
isolation on every route, short-lived presigned URLs refused by the real S3 server once
expired, no secrets in gateway or worker logs, CORS and size limits from settings. Real Redis
and SeaweedFS behind every gateway; a real worker for the full job.

Already covered elsewhere (not repeated): 401 on every route for missing/unknown keys and
the basic 404 for another key's job (tests/service/test_gateway.py), keys kept only as
hashes (tests/musicedit/test_settings.py), safe checkpoint loading (tests/models/test_loader.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from local_stack import API_KEYS, S3_SECRET_KEY, stack_values, wait_terminal, wait_until
from musicedit.client import MusiceditClient
from musicedit.settings import webhook_secret_from_api_key

ALICE = {"Authorization": "Bearer alice-secret-key"}
BOB = {"Authorization": "Bearer bob-secret-key"}


@pytest.fixture
def gateway(make_settings, run_gateway, redis_url, s3_server, s3_bucket):
    def start(**overrides):
        return run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket),
                                         **overrides))

    return start


def submit(gw, clip: bytes, headers=ALICE, **fields):
    data = {"instruction": "Add drums", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(f"{gw.url}/v1/edits", headers=headers, data=data,
                      files={"file": ("clip.wav", clip, "audio/wav")}, timeout=30)


def job_routes(app) -> list[tuple[str, str]]:
    """(METHOD, path template) of every route in the OpenAPI schema that names a job."""
    return [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
            if "{job_id}" in path for method in operations]


THREE_KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "carol": "carol-secret-key"}


@pytest.mark.parametrize("presented, owner", [
    ("alice-secret-key", "alice"), ("carol-secret-key", "carol"), ("alice-secret-kez", None),
    ("x", None)], ids=["first key", "last key", "unknown key", "short unknown key"])
def test_a_presented_key_is_compared_with_every_key_in_constant_time(
        make_settings, monkeypatch, presented, owner):
    """The route dependency compares the presented key with every configured key through
    `hmac.compare_digest`, on equal-length digests, with no early exit: how long it takes does
    not tell which key matched or whether any did."""
    import asyncio
    import hmac
    from types import SimpleNamespace

    from starlette.requests import Request

    from musicedit.errors import Unauthorized
    from musicedit.settings import hash_api_key
    from service.dependencies import bearer, get_api_key

    settings = make_settings(api_keys=",".join(f"{n}:{s}" for n, s in THREE_KEYS.items()))
    compared: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def counting_compare_digest(a, b):
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr("musicedit.settings.hmac.compare_digest", counting_compare_digest)
    request = Request({"type": "http", "headers": [
        (b"authorization", f"Bearer {presented}".encode())]})
    context = SimpleNamespace(settings=settings)
    credentials = asyncio.run(bearer(request))  # the header, as FastAPI's dependency reads it
    if owner is None:
        with pytest.raises(Unauthorized):
            get_api_key(request, context, credentials)
    else:
        assert get_api_key(request, context, credentials).name == owner
    assert [stored for _, stored in compared] == [k.secret_sha256 for k in settings.api_keys]
    # the presented key's digest, never the key itself, and always as long as a stored hash
    assert {given for given, _ in compared} == {hash_api_key(presented)}
    assert all(len(given) == len(stored) == 64 for given, stored in compared)


def test_no_route_lets_one_key_read_cancel_or_list_another_keys_job(gateway, audio_factory):
    gw = gateway()
    clip = audio_factory().read_bytes()
    queued = submit(gw, clip).json()
    done = submit(gw, clip).json()
    gw.finish_job(done["id"], b"edited")
    routes = job_routes(gw.app)
    # every job route of the app is here; a new route fails this test until it is checked
    assert sorted(routes) == [("DELETE", "/v1/edits/{job_id}"), ("GET", "/v1/edits/{job_id}"),
                              ("GET", "/v1/edits/{job_id}/audio"),
                              ("GET", "/v1/edits/{job_id}/events"),
                              ("POST", "/v1/edits/{job_id}/events/token")]

    for job in (queued, done):
        for method, template in routes:
            url = gw.url + template.replace("{job_id}", job["id"])
            theirs = httpx.request(method, url, headers=BOB)
            missing = httpx.request(method, url.replace(job["id"], "0" * 32), headers=BOB)
            assert theirs.status_code == 404, (method, template, theirs.text)
            # exactly what a job that does not exist looks like (nothing to probe with)
            assert theirs.text.replace(job["id"], "ID") == missing.text.replace("0" * 32, "ID")
            assert "location" not in theirs.headers

    # Bob's DELETE changed nothing; Alice still sees both jobs as they were
    assert httpx.get(queued["status_url"], headers=ALICE).json()["status"] == "queued"
    assert httpx.get(done["status_url"], headers=ALICE).json()["status"] == "succeeded"
    assert httpx.get(f"{done['status_url']}/audio", headers=ALICE).status_code == 302

    # listing: Bob sees none of Alice's jobs, whatever cursor he sends
    bob_list = httpx.get(f"{gw.url}/v1/edits", headers=BOB, params={"limit": 100}).json()
    assert bob_list == {"items": [], "next_cursor": None}
    for before in (1, 2, 3, 10**6):
        page = httpx.get(f"{gw.url}/v1/edits", headers=BOB, params={"before": before}).json()
        assert page["items"] == []
    alice_ids = {j["id"] for j in httpx.get(f"{gw.url}/v1/edits", headers=ALICE).json()["items"]}
    assert alice_ids == {queued["id"], done["id"]}


def test_presigned_result_url_is_refused_by_s3_once_expired(gateway, audio_factory):
    gw = gateway(presign_expiry_seconds=2)
    job = submit(gw, audio_factory().read_bytes()).json()
    gw.finish_job(job["id"], b"edited audio bytes")
    location = httpx.get(f"{job['status_url']}/audio", headers=ALICE).headers["location"]
    assert "X-Amz-Expires=2&" in location or location.endswith("X-Amz-Expires=2")
    assert httpx.get(location).content == b"edited audio bytes"
    time.sleep(3.5)
    expired = httpx.get(location)
    assert expired.status_code == 403, expired.text
    assert b"edited audio bytes" not in expired.content
    # a fresh redirect works again: the URL is short-lived, the result is not gone
    fresh = httpx.get(f"{job['status_url']}/audio", headers=ALICE).headers["location"]
    assert httpx.get(fresh).content == b"edited audio bytes"


def test_cors_and_upload_limit_come_from_settings(gateway, audio_factory):
    gw = gateway(cors_origins="https://app.example.com", max_upload_bytes=100_000)
    allowed = httpx.get(f"{gw.url}/v1/edits", headers={**ALICE, "Origin": "https://app.example.com"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    denied = httpx.get(f"{gw.url}/v1/edits", headers={**ALICE, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers
    preflight = httpx.options(f"{gw.url}/v1/edits/x", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"})
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers

    small = audio_factory(seconds=1.0, sample_rate=16000, channels=1)  # ~32 kB
    assert submit(gw, small.read_bytes()).status_code == 202
    big = audio_factory(seconds=4.0, sample_rate=16000, channels=1).read_bytes()  # ~128 kB
    refused = submit(gw, big)
    assert refused.status_code == 413 and "limit of 100000 bytes" in refused.json()["detail"]


def test_no_cors_headers_without_configured_origins(gateway):
    gw = gateway()
    response = httpx.get(f"{gw.url}/v1/edits", headers={**ALICE, "Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.slow
def test_logs_of_a_full_job_hold_no_keys_secrets_or_presigned_urls(
        redis_server, s3_server, start_worker, start_gateway_process, webhook_receiver,
        audio_factory, tmp_path: Path) -> None:
    """Gateway and worker in their own processes, logging JSON lines at DEBUG; one job with a
    webhook, a 401, a 404, a download; then every line of both logs is searched."""
    redis_client = redis_server.client()
    redis_client.select(8)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    values = stack_values(
        tmp_path / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/8",
        s3=(s3_server, bucket), webhook_allow_private="true", log_level="DEBUG")
    gateway = start_gateway_process(values)
    worker = start_worker(values)
    api_key = API_KEYS["alice"]
    with MusiceditClient(gateway.url, api_key) as client:
        job = client.submit(audio_factory(seconds=1.0), "Add drums", seed=1,
                            webhook_url=webhook_receiver.url, idempotency_key="order-1")
        view = wait_terminal(client, [job.id], 60)[job.id]
        assert view.status.value == "succeeded"
        location = client.http.get(f"/v1/edits/{job.id}/audio").headers["location"]
        assert client.download(job.id)
    httpx.get(f"{gateway.url}/v1/edits", headers={"Authorization": "Bearer wrong-key-123"})
    httpx.get(f"{gateway.url}/v1/edits/{job.id}", headers=BOB)
    wait_until(lambda: webhook_receiver.events_for(job.id), 30, "webhook")
    gateway.stop()
    worker.stop()

    logs = {"gateway": gateway.log.read_text(errors="replace"),
            "worker": worker.log.read_text(errors="replace")}
    secrets = [
        *API_KEYS.values(), "wrong-key-123",
        webhook_secret_from_api_key(api_key), S3_SECRET_KEY,
        location, location.split("?", 1)[1],
    ]
    for name, text in logs.items():
        assert job.id in text, f"the {name} log does not name the job"
        for secret in secrets:
            assert secret not in text, f"the {name} log contains a secret: {secret[:12]}..."
        for marker in ("X-Amz-Signature", "X-Amz-Credential", "Bearer ", "authorization"):
            assert marker.lower() not in text.lower(), f"the {name} log contains {marker!r}"
        assert not re.search(r"[0-9a-f]{64}", text.replace(job.id, "")), \
            f"the {name} log contains a 64-hex string (a key hash or signature?)"
