"""The real engine on the `tiny` model, a SQLite job store and local storage: `run_edit_job`
runs exactly as in a worker, without Celery.

Helpers of `tests/conftest.py` come through the `shared` fixture: importing it as `conftest`
from here would import this file instead (every conftest module is named `conftest`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import soundfile as sf

from musicedit.job_store import BaseJobStore, make_job_store
from musicedit.jobs import EditJob, InputAudio, NormalizedInstruction
from musicedit.storage import ObjectStorage, input_key, make_storage
from worker.edit_job import EditJobDeps
from worker.housekeeping import ShutdownSignal
from worker.metrics import WorkerMetrics


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    from models.loader import load_model
    from models.presets import resolve_model

    return load_model(resolve_model("tiny", tmp_path_factory.mktemp("models")), device="cpu")


@pytest.fixture(scope="module")
def engine(tiny_model) -> Iterator[object]:
    """One shared engine, as in a worker process (batches whatever is submitted)."""
    from models.engine import EditEngine, EngineConfig

    engine = EditEngine(tiny_model, EngineConfig(max_batch_size=4, max_input_seconds=60.0))
    engine.start()
    yield engine
    engine.stop()


class WorkerHarness:
    """`EditJobDeps` for one test plus helpers to create jobs the way the gateway does."""

    def __init__(self, deps: EditJobDeps) -> None:
        self.deps = deps
        self.requeued: list[str] = []

    @property
    def store(self) -> BaseJobStore:
        return self.deps.store

    @property
    def storage(self) -> ObjectStorage:
        return self.deps.storage

    def submit(self, clip: Path, output_format: str = "wav", seed: int | None = 1,
               webhook_url: str | None = None) -> EditJob:
        info = sf.info(str(clip))
        job_id = uuid.uuid4().hex
        with clip.open("rb") as source:
            size = self.storage.put_file(input_key(job_id), source)
        job = EditJob(
            id=job_id,
            owner="alice",
            instruction=NormalizedInstruction(operation="add", stem="Drums",
                                              text="Music piece. Instruct: Add Drums."),
            params={"seed": seed},
            output_format=output_format,
            webhook_url=webhook_url,
            input_key=input_key(job_id),
            input=InputAudio(format=info.format, sample_rate=info.samplerate,
                             channels=info.channels, duration_seconds=info.duration,
                             size_bytes=size),
        )
        created, _ = self.store.create(job)
        return created


@pytest.fixture
def harness(tmp_path: Path, engine, shared, _no_musicedit_env: None) -> Callable[..., WorkerHarness]:
    def build(**overrides: object) -> WorkerHarness:
        values: dict[str, object] = {"worker_progress_interval_seconds": 0.2,
                                     "storage_backoff_seconds": 0.01}
        values.update(overrides)
        settings = shared.build_settings(tmp_path / "var", **values)
        holder: list[WorkerHarness] = []
        deps = EditJobDeps(
            settings=settings, store=make_job_store(settings), storage=make_storage(settings),
            engine=engine, metrics=WorkerMetrics(), notifier=None,
            requeue=lambda job_id: holder[0].requeued.append(job_id),
            shutdown=ShutdownSignal(), worker_id=f"test-{uuid.uuid4().hex[:6]}",
        )
        holder.append(WorkerHarness(deps))
        return holder[0]

    return build
