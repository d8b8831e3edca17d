"""`musicedit worker` in a child process of the local stack, logging to its own file."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from local_stack.processes import ChildProcess, ServiceNotReady, free_port, log_events, wait_until
from local_stack.settings import REPO, child_env

WORKER_READY_TIMEOUT = 90.0
WORKER_COMMAND = (sys.executable, "-m", "cli", "worker")


@dataclass
class WorkerProcess(ChildProcess):
    """A worker configured by `values` (see `stack_values`), serving its metrics on
    `metrics_port`. `start()` returns once Celery logged that the worker is ready, so the
    values must keep `log_level` at INFO or DEBUG. `command` runs something else that ends in
    the worker (a script that installs a fault first)."""

    values: dict[str, str]
    log: Path
    metrics_port: int = field(default_factory=free_port)
    ready_timeout: float = WORKER_READY_TIMEOUT
    command: tuple[str, ...] = WORKER_COMMAND
    stop_timeout = 60.0

    def start(self) -> WorkerProcess:
        env = child_env({**self.values, "worker_metrics_port": str(self.metrics_port)})
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                list(self.command), cwd=REPO, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        process = self.process
        started = len(self.events())

        def ready() -> bool:
            if process.poll() is not None:
                raise ServiceNotReady(f"worker exited with {process.returncode}; see {self.log}")
            return any(e.get("message", "").endswith(" ready.")
                       for e in self.events()[started:])

        wait_until(ready, self.ready_timeout, "celery worker", self.log)
        return self

    def events(self, name: str | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
        """The worker's log events, optionally only those named `name` or about `job_id`."""
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
