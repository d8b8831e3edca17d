"""A job's event stream (`GET /v1/edits/{id}/events`), its stream tokens and the clients'
`events()`/`wait()`, over HTTP against real Redis and SeaweedFS; a test plays the worker's
part on the real job store."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any

import httpx
import pytest

from musicedit.client import ApiError, AsyncMusiceditClient, MusiceditClient
from musicedit.event_stream import EventStreamReader, JobEvent
from musicedit.jobs import EditJobView, JobState
from musicedit.storage import result_key
from service.stream_tokens import issue_token, verify_token

ALICE_KEY, BOB_KEY = "alice-secret-key", "bob-secret-key"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


@pytest.fixture
def gateway(make_settings, run_gateway, redis_url, s3_server, s3_bucket):
    """A gateway whose streams poll every 50 ms and heartbeat every 0.3 s."""
    return run_gateway(make_settings(
        redis_url=redis_url, s3=(s3_server, s3_bucket), events_poll_interval_seconds="0.05",
        events_heartbeat_seconds="0.3"))


def submit(gw, audio_factory) -> str:
    response = httpx.post(f"{gw.url}/v1/edits", headers=ALICE, data={"instruction": "Add drums"},
                          files={"file": audio_factory(seconds=1.0).read_bytes()})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def finish(gw, job_id: str) -> None:
    """What a worker does: claim, report progress, store a result, complete."""
    store = gw.context.store
    store.claim(job_id, "w1", 30)
    time.sleep(0.2)
    store.update_progress(job_id, "w1", 0, 200)
    time.sleep(0.2)
    store.update_progress(job_id, "w1", 80, 200)
    time.sleep(0.2)
    key = result_key(job_id, "wav")
    gw.context.storage.put_file(key, io.BytesIO(b"RIFF-result"))
    store.complete(job_id, "w1", key)


def read_stream(url: str, headers: dict[str, str], limit: float = 30.0) -> tuple[
        list[JobEvent], list[str]]:
    """Every event and every raw line of one connection, until the server closes it."""
    reader = EventStreamReader()
    events, lines = [], []
    with httpx.stream("GET", url, headers=headers, timeout=limit) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            lines.append(line)
            event = reader.feed(line)
            if event is not None:
                events.append(event)
    return events, lines


def first_event(url: str) -> JobEvent:
    """The first event of a stream; then the client drops it."""
    reader = EventStreamReader()
    with httpx.stream("GET", url, headers=ALICE, timeout=10) as response:
        return next(event for line in response.iter_lines()
                    if (event := reader.feed(line)) is not None)


def test_a_stream_shows_state_queue_and_progress_then_one_end_and_closes(gateway,
                                                                        audio_factory):
    first, job_id = submit(gateway, audio_factory), submit(gateway, audio_factory)

    def cancel_first_then_run() -> None:
        time.sleep(0.5)
        gateway.context.store.request_cancel(first)
        time.sleep(0.2)
        finish(gateway, job_id)

    worker = threading.Thread(target=cancel_first_then_run)
    worker.start()
    events, lines = read_stream(f"{gateway.url}/v1/edits/{job_id}/events", ALICE)
    worker.join()
    assert lines[0] == "retry: 1000"
    shown = [(e.event, e.job.status, e.job.queue_position, e.job.progress.frames_done,
              e.job.progress.frames_total, e.job.progress.fraction) for e in events]
    assert shown == [
        ("job", JobState.queued, 1, 0, 0, 0.0),     # behind the first job
        ("job", JobState.queued, 0, 0, 0, 0.0),     # the first one was canceled
        ("job", JobState.running, None, 0, 0, 0.0),
        ("job", JobState.running, None, 0, 200, 0.0),
        ("job", JobState.running, None, 80, 200, 0.4),
        ("end", JobState.succeeded, None, 200, 200, 1.0),
    ]
    assert len({e.id for e in events}) == len(events)
    assert events[-1].job.audio_url == f"{gateway.url}/v1/edits/{job_id}/audio"
    assert events[-1].job == EditJobView.model_validate(
        httpx.get(f"{gateway.url}/v1/edits/{job_id}", headers=ALICE).json())


def test_an_idle_stream_sends_heartbeats(gateway, audio_factory):
    job_id = submit(gateway, audio_factory)
    heartbeats = 0
    with httpx.stream("GET", f"{gateway.url}/v1/edits/{job_id}/events", headers=ALICE,
                      timeout=10) as response:
        for line in response.iter_lines():
            heartbeats += line.startswith(":")
            if heartbeats == 2:
                break
    assert heartbeats == 2


def test_last_event_id_resumes_without_losing_the_end(gateway, audio_factory):
    job_id = submit(gateway, audio_factory)
    url = f"{gateway.url}/v1/edits/{job_id}/events"
    queued = first_event(url)
    finish(gateway, job_id)
    # the client saw `queued` and dropped; the job ended meanwhile: it gets the end at once
    events, _ = read_stream(url, {**ALICE, "Last-Event-ID": queued.id})
    assert [(e.event, e.job.status) for e in events] == [("end", JobState.succeeded)]
    # ... as does a client that cannot set the header (a new EventSource)
    events, _ = read_stream(f"{url}?resume_after={queued.id}", ALICE)
    assert [e.event for e in events] == ["end"]
    # a client that has the end gets 204: nothing more (EventSource stops reconnecting)
    done = httpx.get(url, headers={**ALICE, "Last-Event-ID": events[0].id})
    assert done.status_code == 204


def test_a_resumed_stream_does_not_repeat_the_state_the_client_has(gateway, audio_factory):
    job_id = submit(gateway, audio_factory)
    url = f"{gateway.url}/v1/edits/{job_id}/events"
    queued = first_event(url)
    threading.Timer(0.5, finish, args=(gateway, job_id)).start()
    events, _ = read_stream(url, {**ALICE, "Last-Event-ID": queued.id})
    assert events[0].job.status is JobState.running  # not `queued` again
    assert events[-1].event == "end"


def test_another_keys_job_is_404_and_a_stream_needs_credentials(gateway, audio_factory):
    job_id = submit(gateway, audio_factory)
    url = f"{gateway.url}/v1/edits/{job_id}/events"
    assert httpx.get(url, headers=BOB).status_code == 404
    assert httpx.post(f"{url}/token", headers=BOB).status_code == 404
    assert httpx.get(f"{gateway.url}/v1/edits/{'0' * 32}/events", headers=ALICE
                     ).status_code == 404
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, params={"token": ALICE_KEY}).status_code == 401  # a key is no token


def test_a_stream_token_opens_only_its_jobs_stream_for_a_while(gateway, audio_factory):
    job_id, other = submit(gateway, audio_factory), submit(gateway, audio_factory)
    issued = httpx.post(f"{gateway.url}/v1/edits/{job_id}/events/token", headers=ALICE).json()
    assert ALICE_KEY not in issued["events_url"]
    assert issued["events_url"] == (f"{gateway.url}/v1/edits/{job_id}/events?token="
                                    f"{issued['token']}")
    assert issued["expires_at"] - time.time() == pytest.approx(60, abs=5)
    threading.Timer(0.3, finish, args=(gateway, job_id)).start()
    events, _ = read_stream(issued["events_url"], {})
    assert events[-1].event == "end"
    wrong_job = httpx.get(f"{gateway.url}/v1/edits/{other}/events",
                          params={"token": issued["token"]})
    assert wrong_job.status_code == 401 and "for job" in wrong_job.json()["detail"]
    forged = issued["token"][:-2] + ("AA" if not issued["token"].endswith("AA") else "BB")
    assert httpx.get(issued["events_url"].split("?")[0],
                     params={"token": forged}).status_code == 401


def test_stream_tokens_expire_and_die_with_their_key(make_settings):
    settings = make_settings()
    alice = next(key for key in settings.api_keys if key.name == "alice")
    token = issue_token(alice, "job1", 60, now=1000.0)
    assert verify_token(token.token, "job1", settings, now=1059.0) == alice
    with pytest.raises(Exception, match="expired"):
        verify_token(token.token, "job1", settings, now=1061.0)
    without_alice = make_settings(api_keys="bob:bob-secret-key")
    with pytest.raises(Exception, match="not valid"):
        verify_token(token.token, "job1", without_alice, now=1001.0)
    for garbage in ("", "x", "x.y", "e30.AAAA", "bm90IGpzb24.AAAA"):
        with pytest.raises(Exception, match="malformed|not valid"):
            verify_token(garbage, "job1", settings, now=1001.0)


def test_the_clients_follow_a_job_and_wait_on_its_stream(gateway, audio_factory):
    with MusiceditClient(gateway.url, ALICE_KEY) as client:
        job = client.submit(audio_factory(seconds=1.0), "Add drums")
        threading.Timer(0.3, finish, args=(gateway, job.id)).start()
        events = list(client.events(job.id))
        assert [e.event for e in events][-1] == "end"
        assert [e.job.status for e in events][0] is JobState.queued
        second = client.submit(audio_factory(seconds=1.0), "Add drums")
        threading.Timer(0.3, finish, args=(gateway, second.id)).start()
        assert client.wait(second.id, timeout=30, poll_seconds=60).status is JobState.succeeded
        with pytest.raises(ApiError) as info:
            list(client.events("0" * 32))
        assert info.value.status == 404

    async def scenario() -> list[Any]:
        async with AsyncMusiceditClient(gateway.url, ALICE_KEY) as client:
            job = await client.submit(audio_factory(seconds=1.0), "Add drums")
            threading.Timer(0.3, finish, args=(gateway, job.id)).start()
            seen = [event async for event in client.events(job.id)]
            waited = await client.wait(job.id, timeout=10, poll_seconds=60)
            return [*seen, waited]

    *seen, waited = asyncio.run(scenario())
    assert seen[-1].event == "end" and waited.status is JobState.succeeded


def test_the_gateway_reads_its_streams_jobs_once_per_interval(gateway, audio_factory):
    """Twenty streams on two jobs: the store is read once per poll for all of them, in one
    call, never once per stream."""
    jobs = [submit(gateway, audio_factory) for _ in range(2)]
    store = gateway.context.store
    calls: list[int] = []
    original = store.snapshots

    def counting(job_ids: list[str]) -> Any:
        calls.append(len(job_ids))
        return original(job_ids)

    store.snapshots = counting

    async def streams() -> None:
        async with httpx.AsyncClient(headers=ALICE, timeout=10) as http:
            async def one(job_id: str) -> None:
                async with http.stream("GET", f"{gateway.url}/v1/edits/{job_id}/events") as r:
                    async for line in r.aiter_lines():
                        if line.startswith(":"):  # a heartbeat: the stream is settled
                            return

            await asyncio.gather(*[one(jobs[i % 2]) for i in range(20)])

    try:
        asyncio.run(streams())
    finally:
        del store.snapshots
    assert calls and max(calls) == 2  # one call reads both jobs for all twenty streams
