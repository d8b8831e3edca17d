"""One job the model fails on (non-finite logits for its row only) fails alone; the jobs
decoding in the same batch complete and their results land in S3. Real Redis (job store and
broker) and SeaweedFS S3 from the session fixtures, the real engine with the `tiny` model:
once in-process through the worker path (`run_edit_job`), once through the gateway and a
real Celery worker process.

How the fault is made: tests/reliability/model_fault.py.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path

import pytest
from device_fault import DEVICE_FAULT_SEED
from model_fault import FAULT_SEED, ParamsSlippedPastValidation

from local_stack import API_KEYS, WorkerProcess, stack_values, wait_terminal, wait_until
from musicedit.client import MusiceditClient
from musicedit.job_store import make_job_store
from musicedit.jobs import JobState
from musicedit.settings import Settings
from worker.edit_job import JobOutcome, run_edit_job
from worker.runtime import DEVICE_FAILED_EXIT_CODE

MODEL_ERROR = "The model failed on this input (NonFiniteLogits)"


def result_keys(s3_client, bucket: str) -> list[str]:
    """The result audio files in the bucket (each has its codes beside it)."""
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix="results/")
    keys = sorted(item["Key"] for item in listing.get("Contents", []))
    audio = [key for key in keys if not key.endswith(".codes.npy")]
    assert sorted(f"{key}.codes.npy" for key in audio) == [k for k in keys if k not in audio]
    return audio


def test_a_job_with_non_finite_logits_fails_alone_and_is_dead_lettered(
        harness, audio_factory, redis_url, s3_server, s3_bucket):
    h = harness(redis_url=redis_url, s3=(s3_server, s3_bucket))
    good = [h.submit(audio_factory(seconds=15.0, sample_rate=16000, channels=1), seed=i)
            for i in range(2)]
    bad = h.submit(audio_factory(seconds=4.0, sample_rate=16000, channels=1), seed=9)
    deps = dataclasses.replace(h.deps, engine=ParamsSlippedPastValidation(h.deps.engine, bad.id))
    outcomes: dict[str, JobOutcome] = {}

    def run(job_id: str) -> None:
        outcomes[job_id] = run_edit_job(job_id, deps)

    threads = {job.id: threading.Thread(target=run, args=(job.id,)) for job in (*good, bad)}
    for job in good:
        threads[job.id].start()
    wait_until(lambda: all(h.store.get(j.id).progress.frames_done > 0 for j in good), 60,
                      "the good jobs decoding")
    threads[bad.id].start()  # joins the running batch
    threads[bad.id].join(timeout=60)
    # it failed while its batch mates were still decoding next to it
    assert [h.store.get(j.id).state for j in good] == [JobState.running, JobState.running]
    for thread in threads.values():
        thread.join(timeout=120)

    assert outcomes == {**{j.id: JobOutcome.succeeded for j in good}, bad.id: JobOutcome.failed}
    failed = h.store.get(bad.id)
    assert failed.state is JobState.failed and failed.dead_lettered
    assert MODEL_ERROR in failed.error
    assert [j.id for j in h.store.dead_letters()] == [bad.id]
    for job in good:
        done = h.store.get(job.id)
        assert done.state is JobState.succeeded and done.attempts == 1
        assert done.progress.frames_done == done.progress.frames_total > 0
    assert result_keys(s3_server.client(), s3_bucket) == sorted(
        f"results/{j.id}.wav" for j in good)
    assert h.deps.engine.stats().active_jobs == 0


@pytest.mark.slow
def test_a_job_with_non_finite_logits_in_a_worker_process_fails_alone_and_the_rest_land_in_s3(
        redis_url, s3_server, s3_bucket, model_cache, run_gateway, audio_factory,
        tmp_path: Path) -> None:
    values = stack_values(tmp_path / "var", redis_url=redis_url,
                          s3=(s3_server, s3_bucket), max_batch_size="4", model="tiny",
                          model_cache_dir=str(model_cache))
    # `musicedit worker` whose engine runs jobs submitted with seed `FAULT_SEED` at
    # `cfg_coef=inf` (tests/reliability/model_fault.py)
    fault_script = str(Path(__file__).with_name("model_fault.py"))
    worker = WorkerProcess(values, tmp_path / "worker.log", command=(sys.executable, fault_script))
    try:
        worker.start()
        gateway = run_gateway(Settings(**values))
        with MusiceditClient(gateway.url, API_KEYS["alice"]) as client:
            # long enough to still be decoding when the failing job arrives on a fast machine
            good = [client.submit(audio_factory(seconds=20.0, sample_rate=16000, channels=1),
                                  "Add drums", seed=i) for i in range(2)]
            wait_until(lambda: all(client.get(j.id).progress.frames_done > 0
                                   for j in good), 60, "the good jobs decoding")
            bad = client.submit(audio_factory(seconds=2.0, sample_rate=16000, channels=1),
                                "Add drums", seed=FAULT_SEED)
            views = wait_terminal(client, [bad.id, *(j.id for j in good)], timeout=120)
            assert worker.process.poll() is None  # the worker survived its model raising

        failed = views[bad.id]
        assert failed.status is JobState.failed and MODEL_ERROR in failed.error
        assert "resubmit" in failed.error
        assert [views[j.id].status for j in good] == [JobState.succeeded, JobState.succeeded]
        # same worker, same engine, and the failing job started and ended while both of the
        # others were decoding: it was in their batch
        for job in good:
            timings = views[job.id].timings
            assert timings.started_at < failed.timings.started_at
            assert failed.timings.finished_at < timings.finished_at
        assert [e["error"] for e in worker.events("job_model_error", bad.id)] == [
            "NonFiniteLogits"]
        assert [j.id for j in make_job_store(Settings(**values)).dead_letters()] == [
            bad.id]
        s3 = s3_server.client()
        assert result_keys(s3, s3_bucket) == sorted(f"results/{j.id}.wav" for j in good)
        for job in good:
            result = s3.get_object(Bucket=s3_bucket, Key=f"results/{job.id}.wav")["Body"].read()
            assert result.startswith(b"RIFF") and len(result) > 44
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_worker_whose_gpu_fails_hands_its_job_back_and_exits_70(
        redis_url, s3_server, s3_bucket, model_cache, run_gateway, audio_factory,
        tmp_path: Path) -> None:
    """The black hole issue 16 describes: after a sticky device error every later step would
    fail while the heartbeat stays healthy. The worker instead hands its job back (queued
    again, not failed) and exits with status 70; a healthy worker then runs the job."""
    values = stack_values(tmp_path / "var", redis_url=redis_url,
                          s3=(s3_server, s3_bucket), max_batch_size="2", model="tiny",
                          model_cache_dir=str(model_cache))
    broken = WorkerProcess(values, tmp_path / "broken.log",
                           command=(sys.executable, str(Path(__file__).with_name(
                               "device_fault.py"))))
    healthy = WorkerProcess(values, tmp_path / "healthy.log")
    try:
        broken.start()
        gateway = run_gateway(Settings(**values))
        with MusiceditClient(gateway.url, API_KEYS["alice"]) as client:
            job = client.submit(audio_factory(seconds=3.0, sample_rate=16000, channels=1),
                                "Add drums", seed=DEVICE_FAULT_SEED)
            assert broken.process is not None
            wait_until(lambda: broken.process.poll() is not None, 60, "the broken worker exiting")
            assert broken.process.returncode == DEVICE_FAILED_EXIT_CODE
            back = client.get(job.id)
            # handed back like a job of a shutting-down worker: not counted as an attempt
            assert back.status is JobState.queued and back.attempts == 0 and back.error is None
            assert broken.events("engine_device_failed")
            assert [e["reason"] for e in broken.events("job_released", job.id)] == ["device"]
            healthy.start()
            done = wait_terminal(client, [job.id], timeout=120)[job.id]
        assert done.status is JobState.succeeded and done.attempts == 1
        assert make_job_store(Settings(**values)).dead_letters() == []
    finally:
        broken.stop()
        healthy.stop()
