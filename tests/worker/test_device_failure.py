"""A sticky device error hands the worker's jobs back and ends the worker, instead of failing
every job it would take from then on while its heartbeat stays healthy."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from musicedit.jobs import JobState
from worker.edit_job import JobOutcome, JobsInFlight, run_edit_job
from worker.housekeeping import ShutdownSignal
from worker.runtime import DEVICE_FAILED_EXIT_CODE, exit_after_device_failure

STICKY = "CUDA error: an illegal memory access was encountered"


@pytest.fixture
def breaking_engine(tiny_model, monkeypatch):
    """An engine whose decode step raises a sticky CUDA error from its 5th call on."""
    from models.engine import EditEngine, EngineConfig

    fatal: list[BaseException] = []
    engine = EditEngine(tiny_model, EngineConfig(max_batch_size=4, on_fatal=fatal.append))
    decode_step = tiny_model.lm.decode_step
    calls = []

    def breaking(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 5:
            raise RuntimeError(STICKY)
        return decode_step(*args, **kwargs)

    monkeypatch.setattr(tiny_model.lm, "decode_step", breaking)
    engine.start()
    yield engine, fatal
    engine.stop()


def test_jobs_of_a_failed_device_are_handed_back_not_failed(harness, audio_factory,
                                                            breaking_engine):
    engine, fatal = breaking_engine
    h = harness()
    deps = dataclasses.replace(h.deps, engine=engine)
    jobs = [h.submit(audio_factory(seconds=3.0, sample_rate=32000), seed=i) for i in range(2)]
    outcomes: dict[str, JobOutcome] = {}
    def run(job_id: str) -> None:
        outcomes[job_id] = run_edit_job(job_id, deps)

    threads = [threading.Thread(target=run, args=(job.id,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert outcomes == {job.id: JobOutcome.released for job in jobs}
    assert sorted(h.requeued) == sorted(job.id for job in jobs)
    for job in jobs:
        back = h.store.get(job.id)
        assert back.state is JobState.queued and not back.dead_lettered and back.error is None
    assert len(fatal) == 1 and STICKY in str(fatal[0])
    # a job that reaches this worker afterwards is handed back at once
    late = h.submit(audio_factory(seconds=1.0, sample_rate=32000), seed=9)
    assert run_edit_job(late.id, deps) is JobOutcome.released
    assert h.store.get(late.id).state is JobState.queued


def test_the_worker_exits_non_zero_once_its_jobs_are_handed_back():
    in_flight = JobsInFlight()
    exits: list[tuple[int, float]] = []
    released = threading.Event()

    def hand_back() -> None:  # a task thread releasing its job
        with in_flight:
            released.wait(5)

    holder = threading.Thread(target=hand_back)
    holder.start()
    while in_flight.count() == 0:
        time.sleep(0.01)
    started = time.monotonic()
    shutdown = ShutdownSignal()
    exit_after_device_failure(in_flight, shutdown,
                              exit=lambda code: exits.append((code, time.monotonic())),
                              handback_seconds=5.0)
    assert shutdown.grace_expired()  # no new job is claimed from here on
    time.sleep(0.3)
    assert exits == []  # a task thread still holds a job
    released.set()
    holder.join()
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [code for code, _ in exits] == [DEVICE_FAILED_EXIT_CODE]
    assert exits[0][1] - started < 2.0
    # a worker whose threads never return exits anyway, after the hand-back time
    stuck = JobsInFlight()
    stuck.__enter__()
    late: list[int] = []
    exit_after_device_failure(stuck, ShutdownSignal(), exit=late.append, handback_seconds=0.2)
    time.sleep(0.6)
    assert late == [DEVICE_FAILED_EXIT_CODE]
