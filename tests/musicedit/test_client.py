"""The embedded default (SQLite job store, SQLAlchemy/SQLite broker, local files) driven by the
typed client, sync and async."""

from __future__ import annotations

import asyncio
import io
import socket

import httpx
import pytest

from musicedit.client import ApiError, AsyncMusiceditClient, MusiceditClient
from musicedit.queue import queue_depth
from musicedit.storage import result_key


@pytest.fixture
def embedded(make_settings, run_gateway):
    settings = make_settings()  # no Redis, no S3: the defaults under data_dir
    assert settings.effective_broker_url.startswith("sqla+sqlite:///")
    assert settings.effective_job_store_url.startswith("sqlite:///")
    return run_gateway(settings)


def play_worker(gw, job_id: str, payload: bytes) -> None:
    ctx = gw.context
    job = ctx.store.claim(job_id, "w1", 30)
    ctx.store.update_progress(job_id, "w1", 50, 100)
    key = result_key(job_id, job.output_format)
    ctx.storage.put_file(key, io.BytesIO(payload))
    ctx.store.complete(job_id, "w1", key)


def test_sync_client_end_to_end_on_embedded_defaults(embedded, audio_factory):
    with MusiceditClient(embedded.url, "alice-secret-key") as client:
        job = client.submit(audio_factory(seconds=1.0), "Remove the bass", seed=3,
                            output_format="flac", idempotency_key="k-1")
        assert job.status.value == "queued" and job.instruction.text.endswith("No Bass.")
        assert queue_depth(embedded.context.celery) == 1
        assert client.submit(audio_factory(seconds=1.0), "Remove the bass", seed=3,
                             output_format="flac", idempotency_key="k-1").id == job.id
        play_worker(embedded, job.id, b"fLaC-result")
        done = client.wait(job.id, timeout=5, poll_seconds=0.05)
        assert done.status.value == "succeeded" and done.progress.frames_done == 100
        assert client.download(job.id) == b"fLaC-result"
        assert [j.id for j in client.list().items] == [job.id]
        with pytest.raises(ApiError) as info:
            client.cancel(job.id)
        assert info.value.status == 409


def test_sync_client_surfaces_problems(embedded, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with MusiceditClient(embedded.url, "alice-secret-key") as client:
        with pytest.raises(ApiError) as info:
            client.submit(bad, "Add drums")
        assert info.value.status == 415 and "WAV, FLAC" in info.value.problem["detail"]
        with pytest.raises(ApiError) as info:
            client.get("does-not-exist")
        assert info.value.status == 404
    with MusiceditClient(embedded.url, "wrong") as client, pytest.raises(ApiError) as info:
        client.list()
    assert info.value.status == 401


def test_wait_times_out(embedded, audio_factory):
    with MusiceditClient(embedded.url, "alice-secret-key") as client:
        job = client.submit(audio_factory(), "Add drums")
        with pytest.raises(TimeoutError):
            client.wait(job.id, timeout=0.2, poll_seconds=0.05)


def test_async_client(embedded, audio_factory):
    clip = audio_factory(seconds=1.0)

    async def scenario() -> None:
        async with AsyncMusiceditClient(embedded.url, "bob-secret-key") as client:
            jobs = await asyncio.gather(*[client.submit(clip, "only piano") for _ in range(3)])
            assert len({job.id for job in jobs}) == 3
            canceled = await client.cancel(jobs[0].id)
            assert canceled.status.value == "canceled"
            await asyncio.to_thread(play_worker, embedded, jobs[1].id, b"RIFF")
            done = await client.wait(jobs[1].id, timeout=5, poll_seconds=0.05)
            assert done.status.value == "succeeded"
            assert await client.download(jobs[1].id) == b"RIFF"
            listed = await client.list(limit=2)
            assert len(listed.items) == 2 and listed.next_cursor is not None
            every = [job.id async for job in client.iter_jobs(page_size=2)]
            one_page = [job.id for job in (await client.list(limit=100)).items]
            assert every == one_page and set(every) == {job.id for job in jobs}  # all pages

    asyncio.run(scenario())


class LoseFirstAnswer(httpx.HTTPTransport):
    """A real connection whose first POST reaches the gateway but whose answer is lost on
    the way back (the connection drops), as with a reset or a closed keep-alive socket."""

    def __init__(self) -> None:
        super().__init__()
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                response.read()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


class AsyncLoseFirstAnswer(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                await response.aread()
                raise httpx.RemoteProtocolError("server disconnected", request=request)
        return response


def test_client_retries_a_lost_answer_without_a_second_job(embedded, audio_factory):
    """The first submit is processed but its answer never arrives; the client retries with the
    same (auto-generated) Idempotency-Key and gets the job the first attempt created."""
    transport = LoseFirstAnswer()
    with MusiceditClient(embedded.url, "alice-secret-key", transport=transport) as client:
        job = client.submit(audio_factory(seconds=1.0), "Add drums", seed=1)  # a path: reopened
        assert transport.posts == 2
        assert [j.id for j in client.list().items] == [job.id]
    # One job (the replay re-sends its harmless wake-up message: a worker runs a job once).
    assert embedded.context.store.count_queued() == 1

    async def scenario() -> None:
        transport = AsyncLoseFirstAnswer()
        async with AsyncMusiceditClient(embedded.url, "bob-secret-key",
                                        transport=transport) as client:
            job = await client.submit(audio_factory(seconds=1.0).read_bytes(), "only piano")
            assert transport.posts == 2
            assert [j.id for j in (await client.list()).items] == [job.id]

    asyncio.run(scenario())
    assert embedded.context.store.count_queued() == 2


def test_client_gives_up_after_its_retries():
    """A refused connection (nothing listens) is retried `retries` times, then surfaces."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    attempts = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request):
            attempts.append(request.method)
            return super().handle_request(request)

    with MusiceditClient(f"http://127.0.0.1:{port}", "k", retries=2,
                         transport=Counting()) as client:
        with pytest.raises(httpx.ConnectError):
            client.get("some-job")
    assert attempts == ["GET"] * 3
