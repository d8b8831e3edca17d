"""Worker faults over the real stack: `kill -9` mid-batch, SIGTERM hand-back and drain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from local_stack import API_KEYS, ThreadedGateway, result_and_codes, stack_values, wait_terminal
from musicedit.client import MusiceditClient
from musicedit.settings import Settings

REDIS_DB = 4


@dataclass
class FaultStack:
    values: dict[str, str]
    gateway: Any
    client: MusiceditClient
    s3: Any
    bucket: str

    def result_keys(self, job_id: str) -> list[str]:
        return self.s3.keys(self.bucket, f"results/{job_id}")


@pytest.fixture
def fault_stack(redis_server, s3_server, tmp_path) -> Iterator[FaultStack]:
    """Gateway on fresh Redis/S3 state with production lease and reaper timings."""
    redis_client = redis_server.client()
    redis_client.select(REDIS_DB)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    values = stack_values(
        tmp_path / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        s3=(s3_server, bucket), max_batch_size="4")
    settings = Settings(**values)
    assert settings.lease_seconds + settings.reaper_interval_seconds <= 40  # the 60 s budget
    gateway = ThreadedGateway.start(settings)
    client = MusiceditClient(gateway.url, API_KEYS["alice"])
    yield FaultStack(values, gateway, client, s3_server, bucket)
    client.close()
    gateway.stop()


def wait_all_decoding(client: MusiceditClient, job_ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(client.get(j).progress.frames_done > 0 for j in job_ids):
        assert time.monotonic() < deadline, "the jobs never all reached the engine"
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_mid_batch_every_job_completes_exactly_once_within_60_s(
        fault_stack: FaultStack, start_worker, audio_factory) -> None:
    first = start_worker(fault_stack.values)
    # long enough that none has finished when the worker is killed, on a fast machine too
    jobs = [fault_stack.client.submit(audio_factory(seconds=s), "Add drums", seed=i)
            for i, s in enumerate((20.0, 21.0, 22.0))]
    job_ids = [job.id for job in jobs]
    wait_all_decoding(fault_stack.client, job_ids)

    first.kill9()
    killed_at = time.monotonic()
    second = start_worker(fault_stack.values)
    views = wait_terminal(fault_stack.client, job_ids, timeout=60)
    elapsed = time.monotonic() - killed_at

    assert {v.status.value for v in views.values()} == {"succeeded"}
    assert elapsed < 60, f"recovery took {elapsed:.1f} s"
    for job_id in job_ids:
        assert views[job_id].attempts == 2
        assert fault_stack.result_keys(job_id) == result_and_codes(job_id)
        assert len(second.events("job_succeeded", job_id)) == 1
        assert first.events("job_succeeded", job_id) == []
    assert {e["job_id"] for e in second.events("lease_expired_requeued")} == set(job_ids)


@pytest.mark.slow
def test_sigterm_hands_running_jobs_back_or_lets_them_finish(
        fault_stack: FaultStack, start_worker, audio_factory) -> None:
    # grace 0: the running jobs go back to the queue at once, the worker exits cleanly
    impatient = start_worker({**fault_stack.values, "worker_shutdown_grace_seconds": "0"})
    jobs = [fault_stack.client.submit(audio_factory(seconds=20.0), "Add bass", seed=i)
            for i in range(2)]
    job_ids = [job.id for job in jobs]
    wait_all_decoding(fault_stack.client, job_ids)

    assert impatient.terminate(timeout=30) == 0
    for job_id in job_ids:
        view = fault_stack.client.get(job_id)
        assert view.status.value == "queued" and view.attempts == 0
        assert len(impatient.events("job_released", job_id)) == 1

    # a patient worker takes them; SIGTERM now lets them finish before it exits
    patient = start_worker({**fault_stack.values, "worker_shutdown_grace_seconds": "120"})
    wait_all_decoding(fault_stack.client, job_ids)
    assert patient.terminate(timeout=120) == 0
    for job_id in job_ids:
        view = fault_stack.client.get(job_id)
        assert view.status.value == "succeeded" and view.attempts == 1
        assert fault_stack.result_keys(job_id) == result_and_codes(job_id)
