"""Fixtures of the whole suite: real services on free loopback ports (from `local_stack`),
torn down at the end.

- `redis_server` (session; `redis_url` flushes it per test), `s3_server` (SeaweedFS, session;
  `s3_bucket` gives each test a fresh bucket).
- `make_settings(...)`: `Settings` for these services with small limits; override anything.
- `run_gateway(settings)`: a gateway over real HTTP in a thread; `gw`: one per module.
- `start_worker(values)` / `start_gateway_process(values)`: `musicedit worker` / the gateway in
  their own processes, with the `tiny` model from `model_cache`.
- `harness(...)`: `run_edit_job` on the real engine (`tiny`), without a broker.
- `audio_factory(...)`, `webhook_receiver`, `new_job(...)`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from local_stack import (
    GatewayProcess,
    RedisServer,
    S3Server,
    ThreadedGateway,
    WebhookReceiver,
    WorkerProcess,
    stack_values,
)
from musicedit.job_store import BaseJobStore, make_job_store
from musicedit.jobs import EditJob, InputAudio, NormalizedInstruction
from musicedit.settings import Settings
from musicedit.storage import ObjectStorage, input_key, make_storage


# --- services ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, flushed before the test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket for this test."""
    return s3_server.create_bucket()


# --- settings ------------------------------------------------------------------------------
@pytest.fixture
def _no_musicedit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build Settings explicitly; a developer's MUSICEDIT_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("MUSICEDIT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def make_settings(tmp_path: Path, _no_musicedit_env: None) -> Callable[..., Settings]:
    """`make_settings(redis_url=..., s3=(server, bucket), **overrides)`: `Settings` for the
    test (`local_stack.stack_values`: two API keys, small limits)."""

    def build(**kwargs: Any) -> Settings:
        return Settings(**stack_values(tmp_path / "var", **kwargs))

    return build


# --- gateways ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
                   s3_server: S3Server) -> Iterator[ThreadedGateway]:
    """A gateway with the test settings on the session Redis and a bucket of its own, shared
    by the tests of one module (starting one per test costs seconds); use it through `gw`."""
    values = stack_values(tmp_path_factory.mktemp("gw") / "var", redis_url=redis_server.url,
                          s3=(s3_server, s3_server.create_bucket()))
    gateway = ThreadedGateway.start(Settings(**values))
    yield gateway
    gateway.stop()


@pytest.fixture
def gw(module_gateway: ThreadedGateway, redis_url: str) -> ThreadedGateway:
    """The module's gateway with its Redis flushed and its bucket emptied for this test."""
    storage = module_gateway.context.storage
    for key in storage.list_keys():
        storage.delete(key)
    return module_gateway


@pytest.fixture
def run_gateway() -> Iterator[Callable[..., ThreadedGateway]]:
    """`run_gateway(settings, **components)` serves a gateway over real HTTP until the test
    ends."""
    running: list[ThreadedGateway] = []

    def start(settings: Settings, **components: Any) -> ThreadedGateway:
        gateway = ThreadedGateway.start(settings, **components)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture
def start_gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """`start_gateway_process(values)`: the gateway in its own process until the test ends."""
    gateways: list[GatewayProcess] = []

    def start(values: dict[str, str]) -> GatewayProcess:
        gateway = GatewayProcess(values, tmp_path / f"gateway-{len(gateways)}.log")
        gateways.append(gateway)
        return gateway.start()

    yield start
    for gateway in gateways:
        gateway.stop()


# --- workers -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with the `tiny` preset already written (workers only read it)."""
    from models.presets import resolve_model

    cache = tmp_path_factory.mktemp("model-cache")
    resolve_model("tiny", cache)
    return cache


@pytest.fixture
def start_worker(model_cache: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(values)` runs a worker on the services named by `values` until the test
    ends."""
    workers: list[WorkerProcess] = []

    def start(values: dict[str, str]) -> WorkerProcess:
        values = {"model": "tiny", "model_cache_dir": str(model_cache), **values}
        worker = WorkerProcess(values, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from models.loader import load_model
    from models.presets import resolve_model

    return load_model(resolve_model("tiny", tmp_path_factory.mktemp("models")), device="cpu")


@pytest.fixture(scope="module")
def engine(tiny_model: Any) -> Iterator[Any]:
    """One shared engine, as in a worker process (batches whatever is submitted)."""
    from models.engine import EditEngine, EngineConfig

    engine = EditEngine(tiny_model, EngineConfig(max_batch_size=4, max_input_seconds=60.0))
    engine.start()
    yield engine
    engine.stop()


class WorkerHarness:
    """`EditJobDeps` for one test plus helpers to create jobs the way the gateway does."""

    def __init__(self, deps: Any) -> None:
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
def harness(tmp_path: Path, engine: Any, _no_musicedit_env: None) -> Callable[..., WorkerHarness]:
    """`harness(**settings)`: `run_edit_job`'s dependencies on the shared engine, a job store
    and storage (SQLite and files unless the settings name Redis and S3), without Celery."""
    from worker.edit_job import EditJobDeps
    from worker.housekeeping import ShutdownSignal
    from worker.metrics import WorkerMetrics

    def build(**overrides: Any) -> WorkerHarness:
        values: dict[str, Any] = {"worker_progress_interval_seconds": 0.2,
                                  "storage_backoff_seconds": 0.01}
        values.update(overrides)
        settings = Settings(**stack_values(tmp_path / "var", **values))
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


# --- data ----------------------------------------------------------------------------------
def _new_job(owner: str = "alice", idempotency_key: str | None = None,
             request_hash: str | None = None, job_id: str | None = None,
             size_bytes: int = 64000) -> EditJob:
    """A queued "Add drums" job of a 1 s WAV input stored at `inputs/{id}`."""
    job_id = job_id or uuid.uuid4().hex
    return EditJob(
        id=job_id,
        owner=owner,
        instruction=NormalizedInstruction(operation="add", stem="Drums",
                                          text="Music piece. Instruct: Add Drums."),
        input_key=f"inputs/{job_id}",
        input=InputAudio(format="WAV", sample_rate=32000, channels=1, duration_seconds=1.0,
                         size_bytes=size_bytes),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )


@pytest.fixture
def new_job() -> Callable[..., EditJob]:
    """The one way tests make an `EditJob` record without the gateway:
    `new_job(owner="alice", idempotency_key=None, request_hash=None, job_id=None,
    size_bytes=64000)`."""
    return _new_job


@pytest.fixture
def audio_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write a test clip: `audio_factory(seconds=1.0, sample_rate=32000, channels=2,
    format="WAV", subtype=None, content="noise"|"silence"|"nan"|"inf")`."""
    import numpy as np
    import soundfile as sf

    counter = iter(range(10**6))

    def write(seconds: float = 1.0, sample_rate: int = 32000, channels: int = 2,
              format: str = "WAV", subtype: str | None = None, content: str = "noise") -> Path:
        frames = int(round(seconds * sample_rate))
        rng = np.random.default_rng(0)
        data = (rng.standard_normal((frames, channels)) * 0.1).astype("float32")
        if content == "silence":
            data[:] = 0.0
        elif content in ("nan", "inf") and frames:
            data[frames // 2, 0] = np.nan if content == "nan" else np.inf
            subtype = subtype or "FLOAT"
        extension = format.lower()
        path = tmp_path / f"clip-{next(counter)}.{extension}"
        sf.write(str(path), data, sample_rate, format=format, subtype=subtype)
        return path

    return write



@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()

