"""Fixtures of the fault tests: the end-to-end fixtures of `tests/e2e` (worker processes with
the `tiny` model, webhook receiver) and the worker harness of `tests/worker` (`run_edit_job`
on the real engine), re-used as they are, plus a gateway process.

Those conftest files are loaded under their own module names and their fixtures re-exported:
pytest finds fixtures by the names defined in a conftest module.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
HERE = Path(__file__).resolve().parent
for path in (E2E, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _load_conftest(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_e2e = _load_conftest("musicedit_e2e_conftest", E2E / "conftest.py")
model_cache = _e2e.model_cache
start_worker = _e2e.start_worker
# `run_edit_job` on the real engine without a broker (tests/worker): `harness`, `engine`
_worker = _load_conftest("musicedit_worker_conftest",
                         Path(__file__).resolve().parents[1] / "worker" / "conftest.py")
tiny_model = _worker.tiny_model
engine = _worker.engine
harness = _worker.harness

from e2e_services import subprocess_env  # noqa: E402  (needs E2E on sys.path)
from stack_processes import GatewayProcess  # noqa: E402


@pytest.fixture
def start_gateway_process(shared, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """`start_gateway_process(values)`: the gateway in its own process until the test ends."""
    gateways: list[GatewayProcess] = []

    def start(values: dict[str, str]) -> GatewayProcess:
        gateway = GatewayProcess(subprocess_env(values), shared.free_port(),
                                 tmp_path / f"gateway-{len(gateways)}.log", shared)
        gateways.append(gateway)
        return gateway.start()

    yield start
    for gateway in gateways:
        gateway.stop()
