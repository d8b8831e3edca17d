"""A job's progress total is known as soon as the worker starts it, before the engine has
encoded a frame, and it is the total the engine then counts to."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from musicedit.jobs import JobState
from worker.edit_job import JobOutcome, run_edit_job


class RecordingStore:
    """The job store, recording every progress write."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.progress: list[tuple[int, int]] = []

    def update_progress(self, job_id: str, worker_id: str, done: int, total: int) -> Any:
        self.progress.append((done, total))
        return self.store.update_progress(job_id, worker_id, done, total)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.mark.parametrize("seconds, rate", [(2.3, 44100), (1.0, 32000), (1.7, 22050)])
def test_the_first_progress_write_has_the_engines_total(harness, audio_factory, seconds, rate):
    h = harness()
    job = h.submit(audio_factory(seconds=seconds, sample_rate=rate))
    store = RecordingStore(h.store)
    assert run_edit_job(job.id, dataclasses.replace(h.deps, store=store)) is JobOutcome.succeeded
    done = h.store.get(job.id)
    assert done.state is JobState.succeeded
    assert store.progress[0] == (0, done.progress.frames_total)  # before any frame
    assert {total for _, total in store.progress} == {done.progress.frames_total}
