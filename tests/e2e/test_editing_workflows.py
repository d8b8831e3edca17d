"""Editing as musicians do it, through the gateway, Redis, SeaweedFS and a real Celery worker
(`tiny` model): a time range, a chain, a next round of a result, the output's shape."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from local_stack import API_KEYS, ThreadedGateway, WorkerProcess, stack_values, wait_terminal
from musicedit.client import ApiError, AsyncMusiceditClient, MusiceditClient
from musicedit.jobs import step_seed
from musicedit.settings import Settings

REDIS_DB = 10  # this module's own database on the session's redis-server


@dataclass
class Stack:
    gateway: Any
    worker: WorkerProcess
    alice: MusiceditClient
    bob: MusiceditClient
    s3: Any
    bucket: str

    def object(self, key: str) -> bytes:
        return self.s3.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        listing = self.s3.client().list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, model_cache, tmp_path_factory) -> Iterator[Stack]:
    redis_client = redis_server.client()
    redis_client.select(REDIS_DB)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    root = tmp_path_factory.mktemp("workflows")
    values = stack_values(
        root / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        s3=(s3_server, bucket), max_batch_size="4", model="tiny",
        model_cache_dir=str(model_cache))
    gateway = ThreadedGateway.start(Settings(**values))
    worker = WorkerProcess(values, root / "worker.log").start()
    alice = MusiceditClient(gateway.url, API_KEYS["alice"])
    bob = MusiceditClient(gateway.url, API_KEYS["bob"])
    yield Stack(gateway, worker, alice, bob, s3_server, bucket)
    alice.close()
    bob.close()
    worker.stop()
    gateway.stop()


def _stereo_pcm16(path: Path, seconds: float = 6.0, rate: int = 44100) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.5 * t))
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 0.5)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm


def _done(stack: Stack, job_id: str) -> Any:
    view = wait_terminal(stack.alice, [job_id], timeout=180)[job_id]
    assert view.status.value == "succeeded", view.error
    return view


def _download_pcm(stack: Stack, job_id: str) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(stack.alice.download(job_id)), dtype="int16",
                         always_2d=True)
    return data, rate


def test_a_range_edit_gives_back_the_input_outside_it_bit_for_bit(stack: Stack, tmp_path):
    pcm = _stereo_pcm16(tmp_path / "song.wav")
    job = stack.alice.submit(tmp_path / "song.wav", "Add drums", start_seconds=2.0,
                             end_seconds=4.0, seed=5)
    assert job.time_range is not None and job.time_range.end_seconds == 4.0
    assert (job.output.sample_rate, job.output.channels) == (44100, 2)
    assert [(s.operation, s.stem, s.seed) for s in job.instruction.steps] == [("add", "Drums", 5)]
    view = _done(stack, job.id)
    assert view.progress.frames_done == view.progress.frames_total == 100  # 2 s at 50 frames/s
    out, rate = _download_pcm(stack, job.id)
    assert rate == 44100 and out.shape == pcm.shape
    a, b = 2 * 44100, 4 * 44100
    assert np.array_equal(out[:a], pcm[:a]) and np.array_equal(out[b:], pcm[b:])
    assert not np.array_equal(out[a:b], pcm[a:b])


def test_a_chain_is_the_steps_as_separate_jobs_and_a_result_can_be_edited_again(stack: Stack,
                                                                               tmp_path):
    """On the generative model, 'Remove the guitar, then add piano' gives exactly what 'remove
    the guitar' and then an edit of its result with 'add piano' (the second step's seed, from
    the job) give: same codes, same file. The next round starts from the stored codes, in
    the result's shape."""
    _stereo_pcm16(tmp_path / "song.wav", seconds=3.0)
    chain = stack.alice.submit(tmp_path / "song.wav", "remove the guitar, then add piano",
                               seed=11, engine="generative")
    assert chain.instruction.operation == "chain" and chain.instruction.stem is None
    steps = chain.instruction.steps
    assert [(s.operation, s.stem) for s in steps] == [("remove", "Guitar"), ("add", "Piano")]
    assert [s.seed for s in steps] == [11, step_seed(11, 1)]
    first = stack.alice.submit(tmp_path / "song.wav", "Remove the guitar", seed=11,
                               engine="generative")
    _done(stack, first.id)
    second = stack.alice.submit(None, "Add piano", source_job_id=first.id, seed=steps[1].seed)
    assert second.source_job_id == first.id
    assert (second.input.sample_rate, second.input.channels) == (44100, 2)
    for job in (chain, second):
        _done(stack, job.id)
    codes = {job.id: np.load(io.BytesIO(stack.object(f"results/{job.id}.wav.codes.npy")))
             for job in (chain, first, second)}
    assert np.array_equal(codes[chain.id], codes[second.id])
    assert not np.array_equal(codes[first.id], codes[second.id])
    assert stack.alice.download(chain.id) == stack.alice.download(second.id)


def test_a_range_edit_of_a_range_edit_keeps_both_outsides_bit_exact(stack: Stack, tmp_path):
    pcm = _stereo_pcm16(tmp_path / "song.wav")
    first = stack.alice.submit(tmp_path / "song.wav", "Add drums", start_seconds=1.0,
                               end_seconds=2.5)
    _done(stack, first.id)
    once, _ = _download_pcm(stack, first.id)
    second = stack.alice.submit(None, "Remove the bass", source_job_id=first.id,
                                start_seconds=4.0, end_seconds=5.0)
    _done(stack, second.id)
    twice, rate = _download_pcm(stack, second.id)
    assert rate == 44100 and twice.shape == pcm.shape
    inside_first, inside_second = slice(44100, 110250), slice(4 * 44100, 5 * 44100)
    untouched = np.ones(len(pcm), dtype=bool)
    untouched[inside_first] = untouched[inside_second] = False
    assert np.array_equal(twice[untouched], pcm[untouched])
    assert np.array_equal(twice[inside_first], once[inside_first])  # the first edit stays


def test_the_output_shape_can_be_asked_for(stack: Stack, tmp_path):
    _stereo_pcm16(tmp_path / "song.wav", seconds=2.0, rate=22050)
    job = stack.alice.submit(tmp_path / "song.wav", "Only bass", output_sample_rate=48000,
                             output_channels=1, output_format="flac")
    assert (job.output.sample_rate, job.output.channels) == (48000, 1)
    _done(stack, job.id)
    data, rate = sf.read(io.BytesIO(stack.alice.download(job.id)), always_2d=True)
    assert rate == 48000 and data.shape == (96000, 1)


def test_bad_ranges_and_sources_are_refused_and_leave_nothing_behind(stack: Stack, tmp_path):
    path = tmp_path / "short.wav"
    _stereo_pcm16(path, seconds=3.0)
    before = stack.keys()
    for start, end in ((2.0, 1.0), (1.0, 1.2), (1.0, 9.0), (3.5, None)):
        with pytest.raises(ApiError) as refused:
            stack.alice.submit(path, "Add drums", start_seconds=start, end_seconds=end)
        assert refused.value.status == 422
        assert "the clip is 3.000 s long" in refused.value.problem["detail"]
    both = stack.alice.http.post("/v1/edits", files={"file": ("a.wav", path.read_bytes()),
                                                     "source_job_id": (None, "x")},
                                 data={"instruction": "Add drums"})
    assert both.status_code == 422 and "one of the two" in both.json()["detail"]
    assert stack.keys() == before
    with pytest.raises(ValueError, match="one of them"):
        stack.alice.submit(None, "Add drums")
    finished = stack.alice.submit(path, "Add drums")
    _done(stack, finished.id)
    # another key's job is a 404, exactly like a missing one
    for client, job_id in ((stack.bob, finished.id), (stack.alice, "0" * 32)):
        with pytest.raises(ApiError) as missing:
            client.submit(None, "Add piano", source_job_id=job_id)
        assert missing.value.status == 404 and missing.value.problem["title"] == "Job not found"
    # a job that has not succeeded: 409 with its state
    canceled = stack.alice.submit(path, "Add bass", start_seconds=0.5)
    stack.alice.cancel(canceled.id)
    wait_terminal(stack.alice, [canceled.id], timeout=60)
    settled = stack.keys()
    with pytest.raises(ApiError) as not_ready:
        stack.alice.submit(None, "Add piano", source_job_id=canceled.id)
    assert not_ready.value.status == 409 and "is canceled" in not_ready.value.problem["detail"]
    # a result that is gone (retention): 404 that says so
    stack.s3.client().delete_object(Bucket=stack.bucket, Key=f"results/{finished.id}.wav")
    with pytest.raises(ApiError) as expired:
        stack.alice.submit(None, "Add piano", source_job_id=finished.id)
    assert expired.value.status == 404 and "no longer stored" in expired.value.problem["detail"]
    assert stack.keys() == [k for k in settled if k != f"results/{finished.id}.wav"]


def test_the_idempotency_hash_covers_the_new_fields(stack: Stack, tmp_path):
    path = tmp_path / "song.wav"
    _stereo_pcm16(path, seconds=2.0)
    first = stack.alice.submit(path, "Add drums", start_seconds=0.5, idempotency_key="range-1")
    again = stack.alice.submit(path, "Add drums", start_seconds=0.5, idempotency_key="range-1")
    assert again.id == first.id
    for change in (dict(start_seconds=0.6), dict(output_channels=1)):
        with pytest.raises(ApiError) as conflict:
            stack.alice.submit(path, "Add drums", idempotency_key="range-1",
                               **{"start_seconds": 0.5, **change})
        assert conflict.value.status == 409


def test_the_async_client_edits_a_range_of_a_result(stack: Stack, tmp_path):
    import asyncio

    path = tmp_path / "song.wav"
    _stereo_pcm16(path, seconds=2.0)
    first = stack.alice.submit(path, "Add drums")
    _done(stack, first.id)

    async def again() -> Any:
        async with AsyncMusiceditClient(stack.gateway.url, API_KEYS["alice"]) as client:
            return await client.submit(None, "Remove the drums", source_job_id=first.id,
                                       start_seconds=0.5, end_seconds=1.5)

    job = asyncio.run(again())
    assert job.source_job_id == first.id and job.time_range is not None
    _done(stack, job.id)
    assert httpx.get(f"{stack.gateway.url}/v1/edits/{job.id}",
                     headers={"Authorization": f"Bearer {API_KEYS['alice']}"}).json()[
        "time_range"] == {"start_seconds": 0.5, "end_seconds": 1.5}
