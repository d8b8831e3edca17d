"""The gateway of a local stack: in its own process (`GatewayProcess`, as production runs it)
or in a thread of the caller (`ThreadedGateway`, whose app and components the caller can
reach).

`python -m local_stack.gateway --port N` is the child process: uvicorn with httptools and
uvloop, JSON-line logs at `MUSICEDIT_LOG_LEVEL`, configured by `MUSICEDIT_*` variables.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from local_stack.processes import (
    STARTUP_TIMEOUT,
    ChildProcess,
    ServiceNotReady,
    free_port,
    wait_until,
)
from local_stack.settings import REPO, child_env


def create_logged_app() -> FastAPI:
    """`service.app.create_app` with the service's JSON-line logging (uvicorn's factory)."""
    from musicedit.logs import configure_logging
    from musicedit.settings import get_settings
    from service.app import create_app

    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


@dataclass
class GatewayProcess(ChildProcess):
    """The gateway in a child process configured by `values` (see `stack_values`).

    `processes` > 1 runs that many uvicorn worker processes on the one port (`pid` is then
    their supervisor's).
    """

    values: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    processes: int = 1
    access_log: bool = True
    stop_timeout = 30.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        args = [sys.executable, "-m", "local_stack.gateway", "--port", str(self.port),
                "--processes", str(self.processes)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*args, *(["--access-log"] if self.access_log else [])], cwd=REPO,
                env=child_env(self.values), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise ServiceNotReady(f"gateway exited with {process.returncode}; see {self.log}")
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

        wait_until(up, STARTUP_TIMEOUT, "gateway process", self.log)
        return self


@dataclass
class ThreadedGateway:
    """`service.app.create_app(settings, **components)` served by uvicorn in a daemon thread
    of this process, on a free port; `context` is the app's `ServiceContext`."""

    app: FastAPI
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @classmethod
    def start(cls, settings: Any, **components: Any) -> ThreadedGateway:
        from service.app import create_app

        app = create_app(settings, **components)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on",
                                               access_log=False, timeout_graceful_shutdown=5))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, 20, "uvicorn gateway")
        return cls(app, f"http://127.0.0.1:{port}", server, thread)

    @property
    def context(self) -> Any:
        """The `ServiceContext`: settings, store, storage, celery, metrics, notifier."""
        return self.app.state.context

    def finish_job(self, job_id: str, result: bytes = b"RIFF-result",
                   worker_id: str = "w1") -> Any:
        """Play a worker's part on the real job store and storage: claim the job, store
        `result` as its result, complete it; returns the finished job."""
        from musicedit.storage import result_key

        store, storage = self.context.store, self.context.storage
        job = store.claim(job_id, worker_id, 30)
        key = result_key(job_id, job.output_format)
        storage.put_file(key, io.BytesIO(result))
        return store.complete(job_id, worker_id, key)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the gateway of a local stack (loopback)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run("local_stack.gateway:create_logged_app", factory=True, host="127.0.0.1",
                port=args.port, workers=args.processes, http="httptools", loop="uvloop",
                log_config=None, access_log=args.access_log, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
