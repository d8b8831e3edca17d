"""Gateway + Celery worker + Redis + SeaweedFS, over HTTP, with the real engine (`tiny`)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import soundfile as sf

from local_stack import (
    API_KEYS,
    ThreadedGateway,
    WorkerProcess,
    stack_values,
    wait_terminal,
)
from musicedit.client import AsyncMusiceditClient, MusiceditClient
from musicedit.queue import enqueue_edit
from musicedit.settings import Settings, webhook_secret_from_api_key
from musicedit.webhooks import SIGNATURE_HEADER, verify

REDIS_DB = 3  # this module's own database on the session's redis-server


@dataclass
class Stack:
    gateway: Any
    worker: WorkerProcess
    client: MusiceditClient
    api_key: str
    s3: Any
    bucket: str

    def s3_keys(self, prefix: str) -> list[dict[str, Any]]:
        listing = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return listing.get("Contents", [])


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, model_cache, tmp_path_factory) -> Iterator[Stack]:
    redis_client = redis_server.client()
    redis_client.select(REDIS_DB)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    root = tmp_path_factory.mktemp("e2e")
    values = stack_values(
        root / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        s3=(s3_server, bucket), webhook_allow_private="true", webhook_backoff_seconds="0.2",
        max_batch_size="4", model="tiny", model_cache_dir=str(model_cache))
    gateway = ThreadedGateway.start(Settings(**values))
    worker = WorkerProcess(values, root / "worker.log").start()
    api_key = API_KEYS["alice"]
    client = MusiceditClient(gateway.url, api_key)
    yield Stack(gateway, worker, client, api_key, s3_server, bucket)
    client.close()
    worker.stop()
    gateway.stop()


def test_three_jobs_at_once_share_a_batch_and_download_through_presigned_urls(
        stack: Stack, audio_factory) -> None:
    # long enough that the first job is still decoding when the others have been admitted
    clips = {audio_factory(seconds=s, sample_rate=44100): s for s in (16.0, 17.0, 18.0)}
    before = stack.worker.metrics()

    async def submit_all() -> list[str]:
        async with AsyncMusiceditClient(stack.gateway.url, stack.api_key) as client:
            jobs = await asyncio.gather(*(client.submit(path, "Add drums", seed=i)
                                          for i, path in enumerate(clips)))
        return [job.id for job in jobs]

    job_ids = asyncio.run(submit_all())
    views = wait_terminal(stack.client, job_ids, timeout=120)
    assert {v.status.value for v in views.values()} == {"succeeded"}

    after = stack.worker.metrics()
    # decode steps that ran more than two jobs together (histogram: count minus le=2 bucket)
    narrow = 'musicedit_batch_size_bucket{le="2.0"}'
    wide_steps = ((after["musicedit_batch_size_count"] - after[narrow])
                  - (before["musicedit_batch_size_count"] - before[narrow]))
    assert wide_steps > 0, "the three jobs never shared a decode step"
    assert after['musicedit_jobs_total{state="succeeded"}'] >= 3
    for histogram in ("musicedit_real_time_factor", "musicedit_time_in_queue_seconds",
                      "musicedit_job_decode_seconds"):
        assert after[f"{histogram}_count"] - before[f"{histogram}_count"] == 3
    assert after["musicedit_model_load_seconds"] > 0
    assert after["musicedit_generated_frames_total"] > before["musicedit_generated_frames_total"]

    for job_id, seconds in zip(job_ids, clips.values(), strict=True):
        response = stack.client.http.get(f"/v1/edits/{job_id}/audio", follow_redirects=False)
        assert response.status_code == 302
        url = response.headers["location"]
        assert url.startswith(stack.s3.endpoint_url) and "X-Amz-Signature=" in url
        audio = httpx.get(url, timeout=10)  # no API key: the signature is the authorisation
        assert audio.status_code == 200
        info = sf.info(io.BytesIO(audio.content))
        assert info.duration == pytest.approx(seconds, abs=0.02)
        head = stack.s3.client().head_object(Bucket=stack.bucket, Key=f"results/{job_id}.wav")
        assert head["Metadata"]["job-id"] == job_id
        assert head["Metadata"]["instruction"] == "Music piece. Instruct: Add Drums."


def test_cancel_frees_the_slot_and_webhooks_are_signed(stack: Stack, audio_factory,
                                                         webhook_receiver) -> None:
    running = stack.client.submit(audio_factory(seconds=25.0), "Remove the bass",
                                  engine="generative", webhook_url=webhook_receiver.url)
    quick = stack.client.submit(audio_factory(seconds=2.0), "Add piano", seed=3,
                                webhook_url=webhook_receiver.url)
    deadline = time.monotonic() + 60
    while stack.client.get(running.id).progress.frames_done == 0:
        assert time.monotonic() < deadline, "the long job never reported progress"
        time.sleep(0.2)

    answer = stack.client.cancel(running.id)
    assert answer.cancel_requested
    views = wait_terminal(stack.client, [running.id, quick.id], timeout=60)
    assert views[running.id].status.value == "canceled"
    assert views[quick.id].status.value == "succeeded"
    assert stack.worker.metrics()["musicedit_engine_active_jobs"] == 0
    assert stack.s3_keys(f"results/{running.id}") == []

    secret = webhook_secret_from_api_key(stack.api_key)
    deadline = time.monotonic() + 20
    while len(webhook_receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for job_id, event in ((running.id, "edit.canceled"), (quick.id, "edit.succeeded")):
        [(headers, body)] = webhook_receiver.events_for(job_id)
        assert verify(body, headers[SIGNATURE_HEADER.lower()], secret)
        assert not verify(body, headers[SIGNATURE_HEADER.lower()], "another-secret")
        payload = json.loads(body)
        assert payload["event"] == event and payload["job"]["status"] == event.split(".")[1]


def test_a_redelivered_message_for_a_finished_job_produces_no_second_result(
        stack: Stack, audio_factory) -> None:
    job = stack.client.submit(audio_factory(seconds=2.0), "Only guitar", seed=5)
    done = wait_terminal(stack.client, [job.id], timeout=60)[job.id]
    assert done.status.value == "succeeded"
    [result] = stack.s3_keys(f"results/{job.id}")

    enqueue_edit(stack.gateway.context.celery, job.id)  # what a broker redelivery looks like
    deadline = time.monotonic() + 30
    while not stack.worker.events("job_skipped", job.id):
        assert time.monotonic() < deadline, "the worker never received the redelivery"
        time.sleep(0.2)

    again = stack.client.get(job.id)
    assert again.status.value == "succeeded"
    assert again.attempts == 1 and again.timings == done.timings
    assert stack.s3_keys(f"results/{job.id}") == [result]  # same object, same ETag and time
    assert len(stack.worker.events("job_succeeded", job.id)) == 1


def test_readyz_sees_the_worker_heartbeat(stack: Stack) -> None:
    ready = httpx.get(f"{stack.gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["live_workers"] == 1
