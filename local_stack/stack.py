"""The whole local stack: Redis, the S3 server, the gateway and workers, started and stopped
together (the load test and the soak)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_stack.gateway import GatewayProcess
from local_stack.servers import RedisServer, S3Server
from local_stack.settings import stack_values
from local_stack.worker import WorkerProcess
from musicedit.storage import codes_key, result_key

TERMINAL_STATES = {"succeeded", "failed", "canceled"}


@dataclass
class LocalStack:
    """Redis + SeaweedFS S3 + the gateway (+ workers on demand) under `directory`.

    Args (beyond the directory):
        api_keys, limits, overrides: the settings of gateway and workers (`stack_values`).
        gateway_processes: uvicorn worker processes of the gateway.
        redis_appendonly: Redis with AOF (fsync always), so a restart keeps every job.
        access_log: the gateway logs every request.
    """

    directory: Path
    api_keys: dict[str, str] | None = None
    limits: dict[str, object] | None = None
    overrides: dict[str, object] = field(default_factory=dict)
    gateway_processes: int = 1
    redis_appendonly: bool = False
    access_log: bool = False
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.directory / "redis", appendonly=self.redis_appendonly)
        self.s3 = S3Server(self.directory / "seaweedfs")
        self.bucket = f"stack-{uuid.uuid4().hex[:8]}"
        self.values = stack_values(
            self.directory / "var", redis_url=self.redis.url, s3=(self.s3, self.bucket),
            keys=self.api_keys, limits=self.limits, model="tiny", device="cpu",
            **self.overrides)
        self.gateway = GatewayProcess(self.values, self.directory / "gateway.log",
                                      processes=self.gateway_processes,
                                      access_log=self.access_log)

    @property
    def base_url(self) -> str:
        return self.gateway.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3.endpoint_url

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The running services by name (`redis`, `s3`, `gateway`), for CPU accounting."""
        running = {"redis": self.redis.process, "s3": self.s3.process,
                   "gateway": self.gateway.process}
        return {name: process for name, process in running.items() if process is not None}

    def start(self) -> LocalStack:
        try:
            self.redis.start()
            self.s3.start()
            self.s3.client().create_bucket(Bucket=self.bucket)
            self.gateway.start()
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, name: str | None = None,
                     overrides: dict[str, object] | None = None) -> WorkerProcess:
        """Start one worker (`tiny` model, CPU, settings `overrides`); return once it is ready."""
        name = name or f"worker-{len(self.workers)}"
        values = {**self.values, "log_level": "INFO",
                  **{key: str(value) for key, value in (overrides or {}).items()}}
        # several workers may load the model at once on a busy machine: allow minutes
        worker = WorkerProcess(values, self.directory / f"{name}.log", ready_timeout=300.0)
        self.workers.append(worker)
        return worker.start()

    def start_workers(self, count: int, **overrides: object) -> list[WorkerProcess]:
        return [self.start_worker(overrides=overrides) for _ in range(count)]

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def stop(self) -> None:
        """Stop everything this stack started: workers, then the gateway, S3 and Redis, so
        nothing sees its dependency vanish under it."""
        self.stop_workers()
        self.gateway.stop()
        self.s3.stop()
        self.redis.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_terminal(client: Any, job_ids: Iterable[str], timeout: float) -> dict[str, Any]:
    """Poll the gateway through `client` (a `MusiceditClient`) until every job has ended.

    Returns:
        The jobs' views by id.

    Raises:
        TimeoutError: some job was still queued or running after `timeout` seconds.
    """
    job_ids = list(job_ids)
    deadline = time.monotonic() + timeout
    views: dict[str, Any] = {}
    while time.monotonic() < deadline:
        views = {job_id: client.get(job_id) for job_id in job_ids}
        if all(view.status.value in TERMINAL_STATES for view in views.values()):
            return views
        time.sleep(0.3)
    states = {job_id: view.status.value for job_id, view in views.items()}
    raise TimeoutError(f"jobs not finished after {timeout} s: {states}")


def result_and_codes(job_id: str, extension: str = "wav") -> list[str]:
    """The S3 keys a generative edit's result leaves: the audio and its codes beside it
    (the codes let a next edit start from the result without re-encoding it), sorted."""
    key = result_key(job_id, extension)
    return sorted([key, codes_key(key)])
