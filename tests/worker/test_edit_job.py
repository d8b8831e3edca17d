"""`run_edit_job` against the real engine (tiny model), SQLite job store and local storage."""

from __future__ import annotations

import threading
import time

import pytest
import soundfile as sf
from prometheus_client import generate_latest

from local_stack import free_port, wait_until
from musicedit.jobs import JobState
from musicedit.storage import result_key
from worker.edit_job import JobOutcome, run_edit_job


def run_in_thread(job_id: str, deps) -> tuple[threading.Thread, list[JobOutcome]]:
    outcome: list[JobOutcome] = []
    thread = threading.Thread(target=lambda: outcome.append(run_edit_job(job_id, deps)))
    thread.start()
    return thread, outcome


@pytest.fixture
def wait_decoding():
    def wait(harness, job_id: str) -> None:
        """Until the engine reported progress for the job (it holds a slot and decodes)."""
        wait_until(lambda: harness.store.get(job_id).progress.frames_done > 0, 60,
                          f"progress of job {job_id}")

    return wait


def test_job_succeeds_with_one_result_and_a_redelivery_is_skipped(harness, audio_factory):
    h = harness()
    job = h.submit(audio_factory(seconds=2.0, sample_rate=44100), output_format="flac")

    assert run_edit_job(job.id, h.deps) is JobOutcome.succeeded

    done = h.store.get(job.id)
    assert done.state is JobState.succeeded
    assert done.result_key == result_key(job.id, "flac")
    assert done.progress.frames_done == done.progress.frames_total > 0
    audio_path = h.storage.local_path(done.result_key)
    data, rate = sf.read(str(audio_path))
    assert sf.info(str(audio_path)).format == "FLAC"
    assert len(data) / rate == pytest.approx(2.0, abs=0.02)
    first_bytes = audio_path.read_bytes()

    # the same wake-up again (broker redelivery): nothing runs, nothing changes
    assert run_edit_job(job.id, h.deps) is JobOutcome.skipped
    again = h.store.get(job.id)
    assert again.attempts == 1 and again.timings == done.timings
    assert audio_path.read_bytes() == first_bytes
    assert done.result is not None and done.result.codes_key == f"{done.result_key}.codes.npy"
    assert h.storage.list_keys("results/") == [done.result_key, done.result.codes_key]
    # one claim (running) and one result (succeeded); the skipped redelivery counts nothing
    exposed = generate_latest(h.deps.metrics.registry).decode()
    assert 'musicedit_jobs_total{state="running"} 1.0' in exposed
    assert 'musicedit_jobs_total{state="succeeded"} 1.0' in exposed


def test_cancel_of_a_running_job_frees_its_engine_slot(harness, audio_factory, wait_decoding):
    h = harness()
    job = h.submit(audio_factory(seconds=20.0))
    thread, outcome = run_in_thread(job.id, h.deps)
    wait_decoding(h, job.id)

    h.store.request_cancel(job.id, "alice")
    thread.join(timeout=15)

    assert outcome == [JobOutcome.canceled]
    assert h.store.get(job.id).state is JobState.canceled
    assert h.deps.engine.stats().active_jobs == 0
    assert h.storage.list_keys("results/") == []


def test_a_nan_input_is_refused_before_it_reaches_the_engine_and_the_job_beside_it_completes(
        harness, audio_factory, monkeypatch):
    """The engine's own input check refuses a NaN clip at submission: it never takes a slot,
    so it never shares a batch (a job that makes the model raise inside a batch: below)."""
    h = harness()
    queued: list[str] = []
    submit_codes = h.deps.engine.submit_codes

    def record(request, *args, **kwargs):
        queued.append(request.job_id)
        return submit_codes(request, *args, **kwargs)

    monkeypatch.setattr(h.deps.engine, "submit_codes", record)
    good = h.submit(audio_factory(seconds=3.0))
    bad = h.submit(audio_factory(seconds=3.0, content="nan"))
    good_thread, good_outcome = run_in_thread(good.id, h.deps)
    bad_thread, bad_outcome = run_in_thread(bad.id, h.deps)
    good_thread.join(60)
    bad_thread.join(60)

    assert good_outcome == [JobOutcome.succeeded]
    assert bad_outcome == [JobOutcome.failed]
    assert queued == [good.id]
    failed = h.store.get(bad.id)
    assert failed.state is JobState.failed
    assert "NaN or infinite" in failed.error
    assert not failed.dead_lettered  # the input's fault, not the system's


def test_a_job_the_model_raises_on_fails_alone_and_its_batch_mates_complete(
        harness, audio_factory, monkeypatch):
    """Three jobs share decode steps; from its 21st step on the model raises whenever one
    job's rows are in the batch. That job fails (dead-lettered, the exception named) while
    the two it shared steps with go on and succeed. (That they decode exactly what they
    would without it is tested in tests/models/test_engine.py, where the engine is stepped
    by hand: here the threads decide when each job joins, which changes float rounding.)"""
    h = harness()
    engine = h.deps.engine
    steps = []

    def on_step(info) -> None:
        steps.append(info)
        h.deps.metrics.on_step(info)

    monkeypatch.setattr(engine.config, "on_step", on_step)
    decode_step = engine.lm.decode_step

    def faulty(tokens, positions, state, weights):
        # the culprit is the only job with a window shorter than 2 s (its 1.3 s clip)
        frames = ((state.cond_bias[:, 0, 0] == 0).sum(-1) - 1).tolist()
        short = [i for i, f in enumerate(frames) if 1 < f < 100]
        if short and positions[2 * short[0]] >= 20:
            raise RuntimeError("the model broke on this job's rows")
        return decode_step(tokens, positions, state, weights)

    monkeypatch.setattr(engine.lm, "decode_step", faulty)
    clip = audio_factory(seconds=12.0, sample_rate=16000, channels=1)
    good = [h.submit(clip, seed=i) for i in (1, 2)]
    bad = h.submit(audio_factory(seconds=1.3, sample_rate=16000, channels=1), seed=3)
    threads = {job.id: run_in_thread(job.id, h.deps) for job in good}
    wait_until(lambda: all(h.store.get(j.id).progress.frames_done > 0 for j in good), 60,
                      "the good jobs decoding")
    bad_thread, bad_outcome = run_in_thread(bad.id, h.deps)  # joins their batch
    bad_thread.join(60)
    # it failed while its batch mates were still decoding next to it
    assert [h.store.get(j.id).state for j in good] == [JobState.running, JobState.running]
    for thread, _ in threads.values():
        thread.join(120)

    assert bad_outcome == [JobOutcome.failed]
    assert [threads[j.id][1] for j in good] == [[JobOutcome.succeeded]] * 2
    failed = h.store.get(bad.id)
    assert failed.dead_lettered
    assert "The model failed on this input (RuntimeError)" in failed.error
    # it really shared steps: three jobs per step, one step isolated, two frames from it
    assert max(s.batch_size for s in steps) == 3
    assert [(s.batch_size, s.frames) for s in steps if s.isolated] == [(3, 2)]
    assert "musicedit_decode_step_isolations_total 1.0" in generate_latest(
        h.deps.metrics.registry).decode()
    for job in good:
        done = h.store.get(job.id)
        assert done.progress.frames_done == done.progress.frames_total > 0
        data, rate = sf.read(str(h.storage.local_path(done.result_key)))
        assert len(data) / rate == pytest.approx(12.0, abs=0.02)


def test_unreachable_storage_is_retried_then_the_job_fails_and_is_dead_lettered(
        harness, audio_factory):
    h = harness()
    job = h.submit(audio_factory(seconds=1.0))
    broken = harness(storage_backend="s3", s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                     s3_access_key_id="x", s3_secret_access_key="y", storage_retries=2)
    # same job store (same data dir), object storage that refuses connections

    started = time.monotonic()
    assert run_edit_job(job.id, broken.deps) is JobOutcome.failed
    assert time.monotonic() - started < 30

    failed = h.store.get(job.id)
    assert failed.state is JobState.failed
    assert "Object storage was unreachable for 3 attempts" in failed.error
    assert failed.dead_lettered
    assert [j.id for j in h.store.dead_letters()] == [job.id]


def test_shutdown_hands_a_running_job_back_to_the_queue(harness, audio_factory, wait_decoding):
    h = harness()
    job = h.submit(audio_factory(seconds=20.0))
    thread, outcome = run_in_thread(job.id, h.deps)
    wait_decoding(h, job.id)

    h.deps.shutdown.begin(grace_seconds=0)
    thread.join(timeout=15)

    assert outcome == [JobOutcome.released]
    back = h.store.get(job.id)
    assert back.state is JobState.queued and back.lease is None and back.attempts == 0
    assert h.requeued == [job.id]
    assert h.deps.engine.stats().active_jobs == 0
    assert h.storage.list_keys("results/") == []


def test_a_worker_that_lost_its_lease_does_not_record_a_result(
        harness, audio_factory, wait_decoding):
    h = harness(lease_seconds=1)
    job = h.submit(audio_factory(seconds=20.0))
    thread, outcome = run_in_thread(job.id, h.deps)
    wait_decoding(h, job.id)

    # another worker takes the job over (as after a network partition longer than the lease)
    h.store.clock = lambda: time.time() + 60
    assert h.store.claim(job.id, "other-worker", 600) is not None
    h.store.clock = time.time
    thread.join(timeout=15)

    assert outcome == [JobOutcome.lease_lost]
    taken = h.store.get(job.id)
    assert taken.state is JobState.running and taken.lease.worker_id == "other-worker"
    assert h.storage.list_keys("results/") == []


def test_a_job_abandoned_max_attempts_times_is_dead_lettered_with_a_webhook(
        harness, audio_factory, webhook_receiver):
    """The claim that dead-letters an abandoned job also reports it: the owner gets the
    edit.failed webhook and the failure is counted, though no worker ran the job to its end."""
    from musicedit.webhooks import SIGNATURE_HEADER, WebhookNotifier, verify

    h = harness(max_attempts=2, webhook_allow_private=True)
    notifier = WebhookNotifier(h.deps.settings)
    h.deps.notifier = notifier
    job = h.submit(audio_factory(seconds=1.0), webhook_url=webhook_receiver.url)
    for dead_worker in ("killed-1", "killed-2"):  # two workers took it and died (no renewals)
        assert h.store.claim(job.id, dead_worker, 0.05) is not None
        time.sleep(0.1)
    failed_before = h.deps.metrics.jobs.labels("failed")._value.get()

    assert run_edit_job(job.id, h.deps) is JobOutcome.failed
    stored = h.store.get(job.id)
    assert stored.state is JobState.failed and stored.dead_lettered and stored.attempts == 2
    assert h.deps.metrics.jobs.labels("failed")._value.get() == failed_before + 1
    webhook_receiver.wait_for(1)
    notifier.close()
    [(headers, body)] = webhook_receiver.events_for(job.id)
    secret = h.deps.settings.webhook_secret_for("alice")
    assert verify(body, headers[SIGNATURE_HEADER.lower()], secret)
    assert b'"edit.failed"' in body and b"abandoned by 2 workers" in body
    # a redelivered message for it afterwards does nothing and sends nothing more
    assert run_edit_job(job.id, h.deps) is JobOutcome.skipped
    time.sleep(0.3)
    assert len(webhook_receiver.received) == 1
