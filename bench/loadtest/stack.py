"""A local musicedit stack of real processes on free loopback ports, for load tests.

`LocalStack` starts `redis-server` and SeaweedFS (`weed mini`, S3) from
`bench/local_services.py` (the test suite's services too), the gateway (uvicorn) and, on
demand, Celery workers with the `tiny` model; `stop()` ends every process it started.
Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.local_services import (S3_ACCESS_KEY, S3_SECRET_KEY, RedisServer, S3Server, free_ports,
                                  stop_process, wait_until)

API_KEY_NAME = "loadtest"
API_KEY = "loadtest-secret"
CLIENT_KEYS = 16  # distinct API keys (users) the load tests spread their jobs over


def api_keys(count: int = CLIENT_KEYS) -> list[str]:
    """The secrets of the stack's API keys: `API_KEY`, then `loadtest-secret-1`, ..."""
    return [API_KEY] + [f"{API_KEY}-{index}" for index in range(1, count)]


@dataclass
class LocalStack:
    """Redis + SeaweedFS S3 + gateway (+ workers) in `directory`; every port is free loopback."""

    directory: Path
    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_processes: int = 1
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    workers: list[subprocess.Popen] = field(default_factory=list)
    worker_metrics_ports: list[int] = field(default_factory=list)
    gateway_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.directory / "redis")
        self.s3 = S3Server(self.directory / "seaweedfs")
        self.bucket = f"loadtest-{uuid.uuid4().hex[:8]}"

    # --- addresses ------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3.endpoint_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[0]}"

    def settings_env(self) -> dict[str, str]:
        """The MUSICEDIT_* variables shared by the gateway and the workers."""
        return {
            "MUSICEDIT_DATA_DIR": str(self.directory / "var"),
            "MUSICEDIT_API_KEYS": ",".join(f"{API_KEY_NAME}-{index}:{secret}"
                                           for index, secret in enumerate(api_keys())),
            "MUSICEDIT_JOB_STORE_URL": self.redis_url,
            "MUSICEDIT_BROKER_URL": self.redis_url,
            "MUSICEDIT_STORAGE_BACKEND": "s3",
            "MUSICEDIT_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "MUSICEDIT_S3_BUCKET": self.bucket,
            "MUSICEDIT_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "MUSICEDIT_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "MUSICEDIT_S3_PATH_STYLE": "true",
            "MUSICEDIT_S3_REGION": "us-east-1",
            "MUSICEDIT_MODEL": "tiny",
            "MUSICEDIT_DEVICE": "cpu",
            "MUSICEDIT_LOG_LEVEL": "WARNING",
            **self.gateway_env,
        }

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {name: value for name, value in os.environ.items()
                if not name.startswith("MUSICEDIT_")}
        return {**base, **self.settings_env(), **(extra or {})}

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen:
        log = (self.directory / f"{name}.log").open("ab")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd, start_new_session=True)
        log.close()
        return process

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> "LocalStack":
        try:
            self._start_redis()
            self._start_s3()
            self._start_gateways()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> None:
        self.processes["redis"] = self.redis.start().process

    def _start_s3(self) -> None:
        self.processes["s3"] = self.s3.start().process
        self.s3.client().create_bucket(Bucket=self.bucket)

    def _start_gateways(self) -> None:
        """One uvicorn with `gateway_processes` worker processes sharing one loopback port."""
        self.gateway_ports = free_ports(1)
        port = self.gateway_ports[0]
        repo = Path(__file__).resolve().parents[2]
        self.processes["gateway"] = self._spawn("gateway", [
            sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--workers",
            str(self.gateway_processes), "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning",
        ], env=self._env({"MUSICEDIT_PORT": str(port)}), cwd=repo)
        wait_until(lambda: httpx.get(f"{self.base_url}/healthz").status_code == 200, 60,
                   f"gateway {self.base_url}")

    def start_workers(self, count: int, max_batch_size: int = 4,
                      timeout: float = 300.0) -> None:
        """Start `count` Celery worker processes and wait until each serves its metrics."""
        repo = Path(__file__).resolve().parents[2]
        ports = free_ports(count)
        for port in ports:
            index = len(self.workers)
            self.workers.append(self._spawn(f"worker-{index}", [
                sys.executable, "-m", "cli", "worker",
            ], env=self._env({
                "MUSICEDIT_WORKER_METRICS_PORT": str(port),
                "MUSICEDIT_MAX_BATCH_SIZE": str(max_batch_size),
            }), cwd=repo))
            self.worker_metrics_ports.append(port)
        for port, process in zip(ports, self.workers[-count:], strict=True):
            def ready(port: int = port, process: subprocess.Popen = process) -> bool:
                if process.poll() is not None:
                    raise SystemExit(f"a worker exited with {process.returncode}; see "
                                     f"{self.directory}/worker-*.log")
                return httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
            wait_until(ready, timeout, f"worker metrics on port {port}")

    def stop_workers(self) -> None:
        for process in self.workers:
            stop_process(process, timeout=60)
        self.workers.clear()
        self.worker_metrics_ports.clear()

    def stop(self) -> None:
        self.stop_workers()
        # gateway first, then S3, then Redis: nothing sees its dependency vanish under it
        gateway = self.processes.pop("gateway", None)
        if gateway is not None:
            stop_process(gateway, timeout=30)
        for service in (self.s3, self.redis):
            service.stop()
        self.processes.clear()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
