"""Processes and helpers of the end-to-end tests: worker subprocesses, a webhook receiver,
settings shared by in-process gateways and subprocess envs, log and metrics readers.

A plain module (fixtures live in `conftest.py`), so test files can import it by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
WORKER_READY_TIMEOUT = 90.0


def service_values(shared: Any, data_dir: Path, *, redis_url: str | None = None,
                   s3: tuple[Any, str] | None = None, **overrides: object) -> dict[str, str]:
    """Settings as `MUSICEDIT_*` strings, for `Settings(**...)` and for subprocess envs alike."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "api_keys": ",".join(f"{name}:{secret}" for name, secret in shared.API_KEYS.items()),
        "max_upload_bytes": 4 * 1024 * 1024,
        "max_input_seconds": 30.0,
        "rate_limit_per_minute": 1000,
        "max_queued_jobs_per_key": 100,
        "log_level": "INFO",
    }
    if redis_url is not None:
        values.update(job_store_url=redis_url, broker_url=redis_url)
    if s3 is not None:
        server, bucket = s3
        values.update(
            storage_backend="s3", s3_endpoint_url=server.endpoint_url, s3_bucket=bucket,
            s3_access_key_id=shared.S3_ACCESS_KEY, s3_secret_access_key=shared.S3_SECRET_KEY,
            s3_path_style="true", s3_region="us-east-1",
        )
    values.update(overrides)
    return {name: str(value) for name, value in values.items()}


def make_settings_from(values: dict[str, str]):
    from musicedit.settings import Settings

    return Settings(**values)


def subprocess_env(values: dict[str, str]) -> dict[str, str]:
    """The test process's environment without any MUSICEDIT_* of the developer, plus `values`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MUSICEDIT_")}
    env.update({f"MUSICEDIT_{name.upper()}": value for name, value in values.items()})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON-line events of a log file (non-JSON lines such as Celery's banner skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


@dataclass
class WorkerProcess:
    """`musicedit worker` in a subprocess, logging to `log`."""

    values: dict[str, str]
    log: Path
    metrics_port: int
    shared: Any
    process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        env = subprocess_env({**self.values, "worker_metrics_port": str(self.metrics_port)})
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker"], cwd=REPO, env=env,
                stdout=out, stderr=subprocess.STDOUT)
        started = len(self.events())

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}; see {self.log}")
            return any(e.get("message", "").endswith(" ready.")
                       for e in self.events()[started:])

        self.shared.wait_until(ready, WORKER_READY_TIMEOUT, "celery worker", self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events(self, name: str | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [e for e in log_events(self.log)
                if (name is None or e.get("event") == name)
                and (job_id is None or e.get("job_id") == job_id)]

    def metrics(self) -> dict[str, float]:
        """Current samples of the worker's /metrics, keyed `name{label="v",...}`."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (Celery warm shutdown) and wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.shared.stop_process(self.process, timeout=30)


def wait_terminal(client: Any, job_ids: list[str], timeout: float) -> dict[str, Any]:
    """Poll the gateway until every job is terminal; returns the views by id."""
    deadline = time.monotonic() + timeout
    views: dict[str, Any] = {}
    while time.monotonic() < deadline:
        views = {job_id: client.get(job_id) for job_id in job_ids}
        if all(v.status.value in ("succeeded", "failed", "canceled") for v in views.values()):
            return views
        time.sleep(0.3)
    states = {job_id: v.status.value for job_id, v in views.items()}
    pytest.fail(f"jobs not finished after {timeout} s: {states}")

