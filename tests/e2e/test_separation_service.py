"""Removing and extracting stems on the source separator, through the gateway, Redis,
SeaweedFS and real Celery workers (`tiny` MusicGen and `tiny` Demucs, random weights): the
routing users see in the job, the sums a separator guarantees, mixed chains, the range, and a
separation-only worker pool beside a MusicGen one."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from local_stack import API_KEYS, ThreadedGateway, WorkerProcess, stack_values, wait_terminal
from musicedit.client import ApiError, MusiceditClient
from musicedit.queue import EDIT_QUEUE, SEPARATION_QUEUE, queue_depth
from musicedit.settings import Settings

REDIS_DB = 11        # the module's stack: one worker of the default role (both engines)
POOLS_REDIS_DB = 12  # a separation-only worker, then a MusicGen worker


@dataclass
class Stack:
    gateway: Any
    worker: WorkerProcess
    alice: MusiceditClient
    s3: Any
    bucket: str

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def job(self, job_id: str) -> Any:
        return self.gateway.context.store.get(job_id)

    def metadata(self, job_id: str) -> dict[str, str]:
        head = self.s3.client().head_object(Bucket=self.bucket, Key=f"results/{job_id}.wav")
        return dict(head["Metadata"])


def _values(root: Path, redis_server, s3_server, db: int, model_cache, **extra) -> dict:
    redis_client = redis_server.client()
    redis_client.select(db)
    redis_client.flushdb()
    return stack_values(
        root / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/{db}",
        s3=(s3_server, s3_server.create_bucket()), max_batch_size="4", model="tiny",
        separator="tiny", model_cache_dir=str(model_cache), **extra)


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, model_cache, tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("separation")
    values = _values(root, redis_server, s3_server, REDIS_DB, model_cache)
    gateway = ThreadedGateway.start(Settings(**values))
    worker = WorkerProcess(values, root / "worker.log").start()
    alice = MusiceditClient(gateway.url, API_KEYS["alice"])
    yield Stack(gateway, worker, alice, s3_server, values["s3_bucket"])
    alice.close()
    worker.stop()
    gateway.stop()


def _song(path: Path, seconds: float = 4.0, rate: int = 44100) -> np.ndarray:
    """A stereo 16-bit clip: two voices and a pulse, different on each channel."""
    t = np.arange(int(rate * seconds)) / rate
    left = 0.25 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sign(np.sin(2 * np.pi * 2 * t))
    right = 0.25 * np.sin(2 * np.pi * 330 * t + 0.5) + 0.05 * np.sin(2 * np.pi * 55 * t)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm


def _done(client: MusiceditClient, job_id: str) -> Any:
    view = wait_terminal(client, [job_id], timeout=180)[job_id]
    assert view.status.value == "succeeded", view.error
    return view


def _pcm(client: MusiceditClient, job_id: str) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(client.download(job_id)), dtype="int16", always_2d=True)
    return data, rate


def test_remove_and_extract_run_on_the_separator_and_add_up_to_the_input(stack: Stack,
                                                                        tmp_path):
    pcm = _song(tmp_path / "song.wav")
    removed = stack.alice.submit(tmp_path / "song.wav", "Remove the vocals")
    extracted = stack.alice.submit(tmp_path / "song.wav", "only the vocals")
    for job in (removed, extracted):
        assert [step.engine for step in job.instruction.steps] == ["separation"]
    views = [_done(stack.alice, job.id) for job in (removed, extracted)]
    (without, rate), (alone, _) = (_pcm(stack.alice, job.id) for job in (removed, extracted))
    assert rate == 44100 and without.shape == alone.shape == pcm.shape
    # the separator's remove and extract split the input: their sum is the input (two
    # 16-bit roundings apart), whatever the (random) weights separated
    total = without.astype(np.int32) + alone.astype(np.int32)
    assert np.abs(total - pcm).max() <= 2
    assert np.abs(alone).max() > 0 and not np.array_equal(without, pcm)
    for view in views:
        assert view.progress.fraction == 1.0 and stack.job(view.id).result.codes_key is None
        assert stack.metadata(view.id)["engines"] == "separation"
    assert stack.keys(f"results/{removed.id}") == [f"results/{removed.id}.wav"]  # no codes
    metrics = stack.worker.metrics()
    assert metrics["musicedit_separation_segments_total"] >= 2
    assert metrics["musicedit_job_separation_seconds_count"] >= 2


def test_a_range_is_separated_and_the_rest_is_the_input_sample_for_sample(stack: Stack,
                                                                         tmp_path):
    pcm = _song(tmp_path / "song.wav")
    job = stack.alice.submit(tmp_path / "song.wav", "Remove the drums", start_seconds=1.0,
                             end_seconds=2.5)
    _done(stack.alice, job.id)
    out, _ = _pcm(stack.alice, job.id)
    inside = slice(44100, int(2.5 * 44100))
    outside = np.ones(len(pcm), dtype=bool)
    outside[inside] = False
    assert np.array_equal(out[outside], pcm[outside])
    assert not np.array_equal(out[inside], pcm[inside])


def test_a_chain_mixes_engines_and_keeps_the_codes_of_a_generative_last_step(stack: Stack,
                                                                            tmp_path):
    _song(tmp_path / "song.wav", seconds=3.0)
    job = stack.alice.submit(tmp_path / "song.wav", "Replace the vocals with piano", seed=4)
    assert [(s.operation, s.stem, s.engine) for s in job.instruction.steps] == [
        ("remove", "Vocals", "separation"), ("add", "Piano", "generative")]
    view = _done(stack.alice, job.id)
    # one pass of the separator and one generated pass: 150 frames each for 3 s
    assert view.progress.frames_done == view.progress.frames_total == 300
    assert stack.job(job.id).result.codes_key == f"results/{job.id}.wav.codes.npy"
    assert stack.metadata(job.id)["engines"] == "separation,generative"
    # and the next round of it runs on the separator again
    again = stack.alice.submit(None, "only the drums", source_job_id=job.id)
    _done(stack.alice, again.id)
    assert stack.alice.download(again.id) != stack.alice.download(job.id)


def test_the_engine_choice_forces_one_engine_or_says_why_it_cannot(stack: Stack, tmp_path):
    path = tmp_path / "song.wav"
    _song(path, seconds=2.0)
    before = stack.keys()
    forced = stack.alice.submit(path, "Remove the drums", engine="generative")
    assert [step.engine for step in forced.instruction.steps] == ["generative"]
    for instruction, engine, says in (
            ("Add vocals", None, "No model here can add Vocals"),
            ("Add drums", "separation", "cannot add a stem"),
            ("Remove the vocals", "generative", "does not know Vocals"),
            ("Remove the drums", "fastest", "engine must be one of")):
        with pytest.raises(ApiError) as refused:
            stack.alice.submit(path, instruction, engine=engine)
        assert refused.value.status == 422 and says in refused.value.problem["detail"]
    _done(stack.alice, forced.id)
    assert stack.keys() == sorted(before + [f"inputs/{forced.id}", f"results/{forced.id}.wav",
                                            f"results/{forced.id}.wav.codes.npy"])
    # the same key and file with another engine is another request
    stack.alice.submit(path, "Remove the drums", idempotency_key="engine-1")
    with pytest.raises(ApiError) as conflict:
        stack.alice.submit(path, "Remove the drums", idempotency_key="engine-1",
                           engine="generative")
    assert conflict.value.status == 409


def test_capabilities_list_what_each_engine_serves(stack: Stack):
    caps = httpx.get(f"{stack.gateway.url}/v1/capabilities",
                     headers={"Authorization": f"Bearer {API_KEYS['alice']}"}).json()
    assert caps["engines"]["generative"] == {
        "operations": ["add", "remove", "extract"], "stems": ["Drums", "Bass", "Piano", "Guitar"]}
    assert caps["engines"]["separation"] == {
        "operations": ["remove", "extract"],
        "stems": ["Drums", "Bass", "Vocals", "Guitar", "Piano"]}
    assert "Vocals" in caps["stems"] and "Only vocals" in caps["instruction_examples"]
    assert "Add vocals" not in caps["instruction_examples"]


def test_a_separation_pool_takes_only_separation_jobs(redis_server, s3_server, model_cache,
                                                      tmp_path):
    values = _values(tmp_path, redis_server, s3_server, POOLS_REDIS_DB, model_cache)
    gateway = ThreadedGateway.start(Settings(**values))
    workers: list[WorkerProcess] = []
    alice = MusiceditClient(gateway.url, API_KEYS["alice"])
    try:
        workers.append(WorkerProcess({**values, "worker_role": "separation"},
                                     tmp_path / "separation.log").start())
        [loaded] = workers[0].events("model_loaded")
        assert loaded["model"] is None and loaded["separator"] == "tiny"  # no MusicGen
        _song(tmp_path / "song.wav", seconds=2.0)
        added = alice.submit(tmp_path / "song.wav", "Add drums")
        removed = alice.submit(tmp_path / "song.wav", "Remove the bass")
        _done(alice, removed.id)
        time.sleep(2.0)  # the separation worker polls its own queue only
        assert alice.get(added.id).status.value == "queued"
        celery = gateway.context.celery
        assert queue_depth(celery, (EDIT_QUEUE,)) == 1
        assert queue_depth(celery, (SEPARATION_QUEUE,)) == 0
        workers.append(WorkerProcess({**values, "worker_role": "edits"},
                                     tmp_path / "edits.log").start())
        _done(alice, added.id)
        assert workers[1].events("job_succeeded", added.id)
        assert not workers[0].events("job_started", added.id)
    finally:
        alice.close()
        for worker in workers:
            worker.stop()
        gateway.stop()
