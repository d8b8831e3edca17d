"""End-to-end fixtures: real Redis and SeaweedFS S3 (from `tests/conftest.py`), the gateway
over HTTP, Celery worker processes (`musicedit worker`, `tiny` model), a webhook receiver.

Helpers of `tests/conftest.py` come through the `shared` fixture: importing it as `conftest`
from here would import this file instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2e_services import WorkerProcess


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with the `tiny` preset already written (workers only read it)."""
    from models.presets import resolve_model

    cache = tmp_path_factory.mktemp("model-cache")
    resolve_model("tiny", cache)
    return cache


@pytest.fixture
def start_worker(shared, model_cache: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(values)` runs a worker on the services named by `values` until the test ends."""
    workers: list[WorkerProcess] = []

    def start(values: dict[str, str]) -> WorkerProcess:
        values = {"model": "tiny", "model_cache_dir": str(model_cache), **values}
        worker = WorkerProcess(values, tmp_path / f"worker-{len(workers)}.log",
                               shared.free_port(), shared)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


