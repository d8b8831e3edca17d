"""The gateway over HTTP (uvicorn) against real Redis (job store + broker) and SeaweedFS S3."""

from __future__ import annotations

import json
import logging
import os
import time

import httpx
import pytest

from local_stack import RedisServer
from musicedit.jobs import JobState
from musicedit.queue import queue_depth

ALICE = {"Authorization": "Bearer alice-secret-key"}
BOB = {"Authorization": "Bearer bob-secret-key"}


@pytest.fixture
def gateway(make_settings, run_gateway, redis_url, s3_server, s3_bucket):
    """Start a gateway; `gateway(**setting_overrides)` for other limits."""

    def start(**overrides):
        return run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket),
                                         **overrides))

    return start


def submit(gw, path_or_bytes, instruction="Add drums", headers=ALICE, filename="clip.wav",
           content_type="audio/wav", **fields):
    content = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    data = {"instruction": instruction, **{k: str(v) for k, v in fields.items()}}
    if instruction is None:
        del data["instruction"]
    return httpx.post(f"{gw.url}/v1/edits", headers=headers, data=data,
                      files={"file": (filename, content, content_type)}, timeout=30)


def assert_nothing_queued_or_stored(gw):
    ctx = gw.context
    assert ctx.store.count_queued() == 0
    assert queue_depth(ctx.celery) == 0
    assert ctx.storage.list_keys() == []
    assert list((ctx.settings.data_dir / "tmp").glob("*")) == []


def assert_problem(response, status, fragment=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if fragment:
        assert fragment in body["detail"], body["detail"]
    return body


def test_a_job_without_a_seed_shows_the_one_it_runs_with(gw, audio_factory):
    """Left out, the seed is drawn at submit time and shown, so a result the user likes can
    be reproduced; an idempotent retry (also without a seed) still matches its job."""
    from musicedit.jobs import seed_for_job

    clip = audio_factory().read_bytes()
    headers = {**ALICE, "Idempotency-Key": "no-seed"}
    body = submit(gw, clip, headers=headers).json()
    assert body["params"]["seed"] == seed_for_job(body["id"]) >= 0
    assert httpx.get(body["status_url"], headers=ALICE).json()["params"] == body["params"]
    again = submit(gw, clip, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == body["id"]
    other = submit(gw, clip).json()
    assert other["params"]["seed"] != body["params"]["seed"]


def test_submit_queues_one_job_and_stores_its_input(gw, audio_factory):
    response = submit(gw, audio_factory(seconds=1.0), "add the drums", seed=7, top_k=50,
                      output_format="flac")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["queue_position"] == 0
    assert body["instruction"]["text"] == "Music piece. Instruct: Add Drums."
    assert body["params"]["seed"] == 7 and body["params"]["top_k"] == 50
    assert body["input"]["format"] == "WAV" and body["input"]["duration_seconds"] == 1.0
    assert response.headers["location"] == body["status_url"] == f"{gw.url}/v1/edits/{body['id']}"
    ctx = gw.context
    assert ctx.storage.list_keys() == [f"inputs/{body['id']}"]
    head = ctx.storage.client.head_object(Bucket=ctx.storage.bucket, Key=f"inputs/{body['id']}")
    assert head["ContentType"] == "audio/vnd.wave"  # IANA type; `audio/wav` makes SeaweedFS gzip it
    assert head["Metadata"] == {"job-id": body["id"], "format": "wav"}
    assert queue_depth(ctx.celery) == 1
    status = httpx.get(body["status_url"], headers=ALICE).json()
    assert status["id"] == body["id"] and status["status"] == "queued"


def test_mp3_sent_as_wav_is_probed_by_its_bytes(gw, audio_factory):
    response = submit(gw, audio_factory(format="MP3"), filename="song.wav",
                      content_type="audio/wav")
    assert response.status_code == 202, response.text
    assert response.json()["input"]["format"] == "MP3"
    storage = gw.context.storage
    head = storage.client.head_object(Bucket=storage.bucket, Key=f"inputs/{response.json()['id']}")
    assert head["ContentType"] == "audio/mpeg"  # from the bytes, not the client's claim


def test_file_name_never_becomes_a_key(gw, audio_factory):
    response = submit(gw, audio_factory(), filename="../../../etc/passwd\x00.wav")
    assert response.status_code == 202, response.text
    assert gw.context.storage.list_keys() == [f"inputs/{response.json()['id']}"]


BAD_AUDIO = {
    "empty file": (lambda f, tmp: b"", 415, "empty"),
    "random bytes named .wav": (lambda f, tmp: os.urandom(20000), 415, "not audio"),
    "truncated wav": (lambda f, tmp: f(seconds=2.0).read_bytes()[:30000], 415, "truncated"),
    "zero-length audio": (lambda f, tmp: f(seconds=0.0).read_bytes(), 422, "minimum is 0.5 s"),
    "over the length limit": (
        lambda f, tmp: f(seconds=31.0, sample_rate=8000, channels=1).read_bytes(), 422,
        "maximum is 30.0 s"),
    "384 kHz": (lambda f, tmp: f(seconds=1.0, sample_rate=384000, channels=1).read_bytes(), 422,
                "384000 Hz"),
    "8 channels": (lambda f, tmp: f(seconds=1.0, sample_rate=8000, channels=8).read_bytes(), 422,
                   "at most 2"),
    "NaN samples": (lambda f, tmp: f(content="nan").read_bytes(), 422, "NaN"),
    "inf samples": (lambda f, tmp: f(content="inf").read_bytes(), 422, "NaN or infinite"),
    "silence": (lambda f, tmp: f(content="silence").read_bytes(), 422, "silent"),
    # decodable, but not a format we accept (the message names the ones we do)
    "AIFF": (lambda f, tmp: f(format="AIFF", subtype="PCM_16").read_bytes(), 415,
             "format AIFF is not supported. Send a WAV, FLAC, OGG (Vorbis/Opus) or MP3"),
    "CAF": (lambda f, tmp: f(format="CAF", subtype="PCM_16").read_bytes(), 415,
            "format CAF is not supported"),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_gets_its_status_and_leaves_nothing(gw, audio_factory, tmp_path, case):
    make, status, fragment = BAD_AUDIO[case]
    assert_problem(submit(gw, make(audio_factory, tmp_path)), status, fragment)
    assert_nothing_queued_or_stored(gw)


BAD_FIELDS = {
    "empty instruction": ({"instruction": ""}, "instruction"),
    "10 kB instruction": ({"instruction": "add drums " * 1000}, "limit is 200"),
    "control characters": ({"instruction": "add\x07drums"}, "control characters"),
    "unknown instruction": ({"instruction": "make it sound like jazz"}, "Supported instructions"),
    "top_k too big": ({"top_k": 5000}, "top_k"),
    "top_p over 1": ({"top_p": 1.5}, "top_p"),
    "zero temperature": ({"temperature": 0}, "temperature"),
    "negative cfg": ({"cfg_coef": -1}, "cfg_coef"),
    "seed not a number": ({"seed": "abc"}, "seed"),
    "output format": ({"output_format": "mp3"}, "output_format"),
    "unknown field": ({"model": "large"}, "Unknown form field 'model'"),
    "loopback webhook": ({"webhook_url": "http://127.0.0.1:8080/hook"}, "non-public"),
    "private webhook": ({"webhook_url": "http://10.1.2.3/hook"}, "non-public"),
    "metadata webhook": ({"webhook_url": "http://169.254.169.254/latest"}, "non-public"),
    "ftp webhook": ({"webhook_url": "ftp://example.com/x"}, "http"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_bad_fields_are_422_and_leave_nothing(gw, audio_factory, case):
    fields, fragment = BAD_FIELDS[case]
    instruction = fields.pop("instruction", "Add drums")
    body = assert_problem(submit(gw, audio_factory(), instruction, **fields), 422, fragment)
    assert body["type"].startswith("urn:musicedit:problem:")
    assert_nothing_queued_or_stored(gw)


def test_missing_parts_are_422(gw, audio_factory):
    assert_problem(submit(gw, audio_factory(), None), 422, "instruction")
    response = httpx.post(f"{gw.url}/v1/edits", headers=ALICE, data={"instruction": "Add drums"},
                          files={"other": ("x", b"x")})
    assert_problem(response, 422, "Unknown form field 'other'")
    assert_nothing_queued_or_stored(gw)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=XYZ", b"--XYZ\r\nContent-Disposition: form-da"),
        ("multipart/form-data; boundary=XYZ", b"this is not multipart at all"),
        ("multipart/form-data", b"--XYZ--\r\n"),
        ("application/json", b'{"instruction": "Add drums"}'),
    ],
)
def test_malformed_bodies_are_400(gw, content_type, body):
    response = httpx.post(f"{gw.url}/v1/edits", content=body,
                          headers={**ALICE, "Content-Type": content_type})
    assert_problem(response, 400)
    assert_nothing_queued_or_stored(gw)


def read_reply(sock) -> bytes:
    """Everything the server sends until it closes the connection (it sends Connection: close)."""
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


def test_declared_oversize_body_is_413_before_reading(gw):
    # Content-Length says 1 GB: refused from the headers, only a few bytes are ever sent
    # (raw socket: httpx would compute the real Content-Length).
    import socket

    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/edits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-secret-key\r\n"
            b"Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 1000000000\r\n"
            b"\r\n--XYZ\r\n"
        )
        reply = read_reply(sock).decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    limit = gw.context.settings.max_upload_bytes
    assert "application/problem+json" in reply and f"limit of {limit} bytes" in reply
    assert_nothing_queued_or_stored(gw)


def test_streamed_1gb_upload_is_cut_off_at_the_cap(gw):
    """A chunked 1 GB upload is refused while streaming; the server stops reading early."""
    import select
    import socket

    host, port = gw.url.removeprefix("http://").split(":")
    chunk = b"\0" * (256 * 1024)
    sent = 0
    reply = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/edits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-secret-key\r\n"
            b"Content-Type: multipart/form-data; boundary=XYZ\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n"
        )
        head = (b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                b"\r\n")
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < 10**9:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert f"limit of {gw.context.settings.max_upload_bytes} bytes".encode() in reply
    # the cap is a few MiB; allow the socket buffers in flight, but nowhere near 1 GB
    assert sent < 64 * 1024 * 1024, sent
    assert_nothing_queued_or_stored(gw)


def test_idempotency_same_body_same_job_other_body_409(gw, audio_factory):
    clip = audio_factory().read_bytes()
    headers = {**ALICE, "Idempotency-Key": "order-42"}
    first = submit(gw, clip, headers=headers, seed=1)
    again = submit(gw, clip, headers=headers, seed=1)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # the replay of a still-queued job re-sends its wake-up (the first one may have been lost)
    assert queue_depth(gw.context.celery) == 2
    assert len(gw.context.storage.list_keys()) == 1
    assert_problem(submit(gw, clip, headers=headers, seed=2), 409, "different request")
    # another key's Idempotency-Key space is separate
    other = submit(gw, clip, headers={**BOB, "Idempotency-Key": "order-42"}, seed=2)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert_problem(submit(gw, clip, headers={**ALICE, "Idempotency-Key": "has space"}), 422)


@pytest.mark.parametrize("limits", [{"max_queued_jobs_per_key": 1},
                                    {"rate_limit_per_minute": 3}], ids=["queued cap", "rate"])
def test_a_retry_at_the_limits_gets_its_job_not_429(gateway, audio_factory, limits):
    """The client resends a submit whose answer was lost, with the same Idempotency-Key: the
    job that filled the queued cap (or used the minute's quota) comes back, not a 429."""
    gw = gateway(**limits)
    clip = audio_factory().read_bytes()
    headers = {**ALICE, "Idempotency-Key": "order-7"}
    first = submit(gw, clip, headers=headers, seed=3)
    assert first.status_code == 202, first.text
    if "rate_limit_per_minute" in limits:  # use up the minute's quota with two other jobs
        assert [submit(gw, clip).status_code for _ in range(2)] == [202, 202]
        assert_problem(submit(gw, clip), 429)
    for _ in range(2):
        again = submit(gw, clip, headers=headers, seed=3)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
    assert_problem(submit(gw, clip, headers=headers, seed=4), 409, "different request")
    if "rate_limit_per_minute" in limits:
        # retries have their own window with the same limit: each is an upload to read
        assert_problem(submit(gw, clip, headers=headers, seed=3), 429)
    else:
        # the key is checked before the audio probe: reusing it is 409 whatever the body holds
        assert_problem(submit(gw, b"not audio", headers=headers), 409, "different request")
        # a new key is a new submission, capped as ever
        assert_problem(submit(gw, clip, headers={**ALICE, "Idempotency-Key": "order-8"}), 429)
    queued = 3 if "rate_limit_per_minute" in limits else 1
    assert gw.context.store.count_queued() == queued
    assert f"inputs/{first.json()['id']}" in gw.context.storage.list_keys()
    assert len(gw.context.storage.list_keys()) == queued


def test_every_route_hides_other_keys_jobs(gw, audio_factory):
    job = submit(gw, audio_factory()).json()
    job_url = f"{gw.url}/v1/edits/{job['id']}"
    for method, url in [("GET", job_url), ("GET", f"{job_url}/audio"), ("DELETE", job_url)]:
        assert_problem(httpx.request(method, url, headers=BOB), 404)
    assert httpx.get(f"{gw.url}/v1/edits", headers=BOB).json()["items"] == []
    assert [j["id"] for j in httpx.get(f"{gw.url}/v1/edits", headers=ALICE).json()["items"]] == [
        job["id"]]
    gw.finish_job(job["id"])
    assert_problem(httpx.get(f"{job_url}/audio", headers=BOB), 404)
    assert httpx.get(job_url, headers=ALICE).json()["status"] == "succeeded"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic YWxpY2U6eA=="}])
def test_missing_or_unknown_key_is_401(gw, headers):
    for method, path in [("GET", "/v1/edits"), ("GET", "/v1/edits/x"), ("POST", "/v1/edits"),
                         ("DELETE", "/v1/edits/x"), ("GET", "/v1/edits/x/audio")]:
        response = httpx.request(method, f"{gw.url}{path}", headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


def test_list_is_paginated_newest_first(gw, audio_factory):
    clip = audio_factory().read_bytes()
    ids = [submit(gw, clip).json()["id"] for _ in range(3)]
    page = httpx.get(f"{gw.url}/v1/edits", params={"limit": 2}, headers=ALICE).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = httpx.get(f"{gw.url}/v1/edits", params={"limit": 2, "before": page["next_cursor"]},
                     headers=ALICE).json()
    assert [j["id"] for j in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    # queued jobs carry their place in the queue, as on their status page; others null
    assert [j["queue_position"] for j in page["items"] + rest["items"]] == [2, 1, 0]
    gw.finish_job(ids[0])
    items = httpx.get(f"{gw.url}/v1/edits", headers=ALICE).json()["items"]
    assert [(j["status"], j["queue_position"]) for j in items] == [
        ("queued", 1), ("queued", 0), ("succeeded", None)]
    assert_problem(httpx.get(f"{gw.url}/v1/edits", params={"limit": 0}, headers=ALICE), 422)


def test_rate_limit_answers_429_with_retry_after(gateway, audio_factory):
    gw = gateway(rate_limit_per_minute=2)
    clip = audio_factory().read_bytes()
    assert [submit(gw, clip).status_code for _ in range(2)] == [202, 202]
    response = submit(gw, clip)
    assert_problem(response, 429, "more than 2 submissions")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert submit(gw, clip, headers=BOB).status_code == 202  # limits are per key
    assert gw.context.store.count_queued() == 3


def test_queued_job_cap_answers_429(gateway, audio_factory):
    gw = gateway(max_queued_jobs_per_key=1)
    clip = audio_factory().read_bytes()
    first = submit(gw, clip)
    assert first.status_code == 202
    response = submit(gw, clip)
    assert_problem(response, 429, "queued jobs (limit 1)")
    assert int(response.headers["retry-after"]) >= 1
    httpx.delete(first.json()["status_url"], headers=ALICE)
    assert submit(gw, clip).status_code == 202


def test_audio_redirects_to_a_short_lived_presigned_url(gateway, audio_factory):
    gw = gateway(presign_expiry_seconds=60)
    job = submit(gw, audio_factory()).json()
    assert_problem(httpx.get(f"{job['status_url']}/audio", headers=ALICE), 409, "queued")
    gw.finish_job(job["id"], b"edited audio bytes")
    status = httpx.get(job["status_url"], headers=ALICE).json()
    assert status["status"] == "succeeded" and status["audio_url"] == f"{job['status_url']}/audio"
    response = httpx.get(status["audio_url"], headers=ALICE)
    assert response.status_code == 302 and response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    assert "X-Amz-Expires=60" in location and "X-Amz-Signature" in location
    assert httpx.get(location).content == b"edited audio bytes"


def test_presigned_url_is_signed_for_the_public_s3_endpoint(gateway, s3_server, audio_factory):
    """Behind compose the services reach S3 as `minio:9000` and clients as `localhost:9000`:
    the redirect names the public host and its signature holds there (SigV4 signs Host)."""
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    gw = gateway(s3_public_endpoint_url=public)
    job = submit(gw, audio_factory()).json()
    gw.finish_job(job["id"], b"edited audio bytes")
    location = httpx.get(f"{job['status_url']}/audio", headers=ALICE).headers["location"]
    assert location.startswith(f"{public}/")
    assert httpx.get(location).content == b"edited audio bytes"
    # the same signature sent to another host name is refused, as it would be from outside
    refused = httpx.get(location.replace(public, s3_server.endpoint_url))
    assert refused.status_code == 403


def test_cancel_queued_job_deletes_its_input(gw, audio_factory):
    job = submit(gw, audio_factory()).json()
    response = httpx.delete(job["status_url"], headers=ALICE)
    assert response.status_code == 202 and response.json()["status"] == "canceled"
    assert gw.context.store.count_queued() == 0
    assert gw.context.storage.list_keys() == []
    assert_problem(httpx.delete(job["status_url"], headers=ALICE), 409, "already canceled")


def test_cancel_of_a_queued_job_sends_its_signed_webhook(gateway, audio_factory,
                                                        webhook_receiver):
    """No worker ever sees a job canceled while queued, so the gateway sends its
    `edit.canceled`; a running job's comes from the worker that stops it."""
    from musicedit.settings import webhook_secret_from_api_key
    from musicedit.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

    gw = gateway(webhook_allow_private=True)
    clip = audio_factory().read_bytes()
    queued = submit(gw, clip, webhook_url=webhook_receiver.url).json()
    running = submit(gw, clip, webhook_url=webhook_receiver.url).json()
    gw.context.store.claim(running["id"], "w1", 30)

    assert httpx.delete(queued["status_url"], headers=ALICE).json()["status"] == "canceled"
    assert httpx.delete(running["status_url"], headers=ALICE).json()["cancel_requested"]
    webhook_receiver.wait_for(1)
    [(headers, body)] = webhook_receiver.events_for(queued["id"])
    event = json.loads(body)
    assert event["event"] == "edit.canceled" and event["job"]["status"] == "canceled"
    assert verify(body, headers[SIGNATURE_HEADER.lower()],
                  webhook_secret_from_api_key("alice-secret-key"))
    assert f"t={headers[TIMESTAMP_HEADER.lower()]}," in headers[SIGNATURE_HEADER.lower()]
    assert_problem(httpx.delete(queued["status_url"], headers=ALICE), 409)  # no second event
    time.sleep(0.5)
    assert len(webhook_receiver.received) == 1


def test_cancel_running_job_flags_it_for_the_worker(gw, audio_factory):
    job = submit(gw, audio_factory()).json()
    gw.context.store.claim(job["id"], "w1", 30)
    response = httpx.delete(job["status_url"], headers=ALICE)
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    assert gw.context.store.renew_lease(job["id"], "w1", 30).cancel_requested


def test_redis_down_answers_503_with_retry_after_and_recovers(make_settings, run_gateway,
                                                             s3_server, s3_bucket, tmp_path,
                                                             audio_factory):
    server = RedisServer(tmp_path / "redis-outage").start()
    try:
        gw = run_gateway(make_settings(redis_url=server.url, s3=(s3_server, s3_bucket),
                                       redis_socket_timeout_seconds=0.5))
        clip = audio_factory().read_bytes()
        job = submit(gw, clip).json()
        server.stop()
        for response in (submit(gw, clip), httpx.get(job["status_url"], headers=ALICE),
                         httpx.get(f"{gw.url}/v1/edits", headers=ALICE)):
            assert_problem(response, 503, "unreachable")
            assert int(response.headers["retry-after"]) >= 1
        assert httpx.get(f"{gw.url}/readyz").status_code == 503
        assert gw.context.storage.list_keys() == [f"inputs/{job['id']}"]  # nothing new stored
        server.start()  # same port; no persistence in this test, so check recovery only
        assert submit(gw, clip).status_code == 202
    finally:
        server.stop()


def test_readyz_needs_a_live_worker(gw):
    response = httpx.get(f"{gw.url}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["job_store"] == body["checks"]["storage"] == "ok"
    assert body["checks"]["broker"] == "ok" and body["checks"]["workers"].startswith("unavailable")
    gw.context.store.register_worker_heartbeat("w1", {"model": "tiny"})
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["live_workers"] == 1
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}


def test_metrics_by_route_and_status(gateway, audio_factory):
    gw = gateway()  # fresh registry: exact counts
    submit(gw, audio_factory())
    httpx.get(f"{gw.url}/v1/edits/nope", headers=ALICE)
    assert 'musicedit_num_jobs{state="running"} 0.0' in httpx.get(f"{gw.url}/metrics").text
    text = httpx.get(f"{gw.url}/metrics").text
    assert ('musicedit_requests_total{method="POST",route="/v1/edits",status="202"} 1.0' in text)
    assert ('musicedit_requests_total{method="GET",route="/v1/edits/{job_id}",status="404"} 1.0'
            in text)
    assert "musicedit_request_duration_seconds_bucket" in text
    assert 'musicedit_jobs_total{state="queued"} 1.0' in text
    assert "musicedit_queue_size 1.0" in text
    assert "musicedit_upload_bytes_count 1.0" in text
    assert 'musicedit_num_jobs{state="queued"} 1.0' in text


def test_jobs_by_state_gauge_reads_the_job_store(gateway, audio_factory):
    """Jobs queued and running across all workers, read at scrape time."""
    gw = gateway()
    clip = audio_factory().read_bytes()
    ids = [submit(gw, clip).json()["id"] for _ in range(3)]
    gw.context.store.claim(ids[0], "w1", 30)  # as a worker does (on another host)
    text = httpx.get(f"{gw.url}/metrics").text
    assert 'musicedit_num_jobs{state="queued"} 2.0' in text
    assert 'musicedit_num_jobs{state="running"} 1.0' in text
    assert "# TYPE musicedit_num_jobs gauge" in text


def test_logs_name_the_job_but_never_keys_or_presigned_urls(gw, audio_factory, caplog):
    caplog.set_level(logging.INFO)
    job = submit(gw, audio_factory()).json()
    gw.finish_job(job["id"])
    location = httpx.get(f"{job['status_url']}/audio", headers=ALICE).headers["location"]
    text = "\n".join(record.getMessage() for record in caplog.records)
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "musicedit.service" and r.getMessage().startswith("{")]
    assert any(e["event"] == "job_submitted" and e["job_id"] == job["id"] for e in events)
    assert any(e["event"] == "request" and e.get("job_id") == job["id"] for e in events)
    assert "alice-secret-key" not in text
    assert location not in text and "X-Amz-Signature" not in text


def test_cors_preflight_uses_configured_origins(gateway):
    gw = gateway(cors_origins="https://app.example.com")
    allowed = httpx.options(f"{gw.url}/v1/edits", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    other = httpx.options(f"{gw.url}/v1/edits", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers


def test_openapi_documents_the_api(gw, audio_factory):
    schema = httpx.get(f"{gw.url}/openapi.json").json()
    post = schema["paths"]["/v1/edits"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "source_job_id", "instruction", "start_seconds", "end_seconds", "seed",
            "top_k", "top_p", "temperature", "cfg_coef", "output_format", "output_sample_rate",
            "output_channels", "webhook_url", "engine"} == set(form["properties"])
    assert {"202", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert "example" in post["responses"]["202"]["content"]["application/json"]
    assert JobState.queued.value in json.dumps(schema)
    listing = schema["paths"]["/v1/edits"]["get"]["responses"]["200"]["content"]
    assert listing["application/json"]["example"]["items"][0]["status_url"]
    cancel = schema["paths"]["/v1/edits/{job_id}"]["delete"]["responses"]["202"]["content"]
    examples = cancel["application/json"]["examples"]
    assert {e["value"]["status"] for e in examples.values()} == {"canceled", "running"}
    # every documented problem status has an application/problem+json example of its own
    problems = {}
    for path in schema["paths"].values():
        for operation in path.values():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and "application/problem+json" in response.get(
                        "content", {}):
                    example = response["content"]["application/problem+json"]["example"]
                    assert example["status"] == int(code) and example["detail"]
                    problems[code] = example
    assert {"400", "401", "404", "409", "413", "415", "422", "429", "503"} <= set(problems)
    assert problems["429"]["retry_after"] and problems["413"]["limit_bytes"]
    # the examples look like the real answers
    real = httpx.get(f"{gw.url}/v1/edits/3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c", headers=ALICE)
    assert {k: real.json()[k] for k in ("type", "title", "status")} == {
        k: problems["404"][k] for k in ("type", "title", "status")}
    assert submit(gw, audio_factory(), output_format="mp3").json() == problems["422"]
    # the API key scheme: /docs gets its "Authorize" button, generated clients send the key
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "API key",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"]}
    assert post["security"] == [{"ApiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    # the webhooks a receiver implements: body schema, signature headers, an example
    assert set(schema["webhooks"]) == {"edit.succeeded", "edit.failed", "edit.canceled"}
    for event, hook in schema["webhooks"].items():
        operation = hook["post"]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"X-Musicedit-Signature", "X-Musicedit-Timestamp"}
        body = operation["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith("/WebhookEvent")
        assert body["example"]["event"] == event and body["example"]["job"]["status_url"]
        assert "HMAC-SHA256" in operation["description"]
