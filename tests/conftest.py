"""Real services for the tests, started on free loopback ports and torn down at the end.

- `redis_server`: a `redis-server` process (session); `redis_url` gives each test a flushed DB.
- `s3_server`: SeaweedFS `weed mini` with S3 credentials (session); `s3_bucket` gives each
  test its own fresh bucket.
- `make_settings(...)`: `Settings` for these services with small limits; override anything.

The worker engineer adds a Celery worker fixture on top of `make_settings` (same broker and
job store URLs as the gateway under test).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import local_services

# The service helpers live in bench/local_services.py (the load tests and the soak use them
# too); other conftests and the soak reach them through this module (`shared`).
from bench.local_services import (S3_ACCESS_KEY, S3_SECRET_KEY,  # noqa: F401
                                  RedisServer, S3Server, ServiceNotReady, free_port, free_ports,
                                  stop_process)


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """`local_services.wait_until`, failing the test (not erroring it) when time runs out."""
    try:
        local_services.wait_until(check, timeout, what, log)
    except ServiceNotReady as exc:
        pytest.fail(str(exc))


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


API_KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}


def build_settings(data_dir: Path, *, redis_url: str | None = None,
                   s3: tuple[S3Server, str] | None = None, **overrides: object):
    """`Settings` for tests: small limits, two API keys (`API_KEYS`), optional real services."""
    from musicedit.settings import Settings

    values: dict[str, object] = {
        "data_dir": data_dir,
        "api_keys": ",".join(f"{name}:{secret}" for name, secret in API_KEYS.items()),
        "max_upload_bytes": 2 * 1024 * 1024,
        "max_input_seconds": 30.0,
        "rate_limit_per_minute": 1000,
        "max_queued_jobs_per_key": 100,
    }
    if redis_url is not None:
        values["job_store_url"] = redis_url
        values["broker_url"] = redis_url
    if s3 is not None:
        server, bucket = s3
        values.update(
            storage_backend="s3",
            s3_endpoint_url=server.endpoint_url,
            s3_bucket=bucket,
            s3_access_key_id=S3_ACCESS_KEY,
            s3_secret_access_key=S3_SECRET_KEY,
            s3_path_style=True,
            s3_region="us-east-1",
        )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_settings(tmp_path: Path, _no_musicedit_env: None) -> Callable[..., "Settings"]:  # noqa: F821
    """Build `Settings` for the test; pass `redis_url=`/`s3=` to use the real services."""

    def build(**kwargs: object):
        return build_settings(tmp_path / "var", **kwargs)

    return build


@pytest.fixture
def _no_musicedit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build Settings explicitly; a developer's MUSICEDIT_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("MUSICEDIT_"):
            monkeypatch.delenv(name)


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


@dataclass
class RunningGateway:
    """A gateway served by uvicorn in a thread; `url` is its base URL."""

    app: object
    url: str
    server: object
    thread: object

    @property
    def context(self):  # the ServiceContext: store, storage, celery, metrics, settings
        return self.app.state.context

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_gateway(settings, **components) -> RunningGateway:
    """Serve `service.app.create_app(settings)` with uvicorn in a thread on a free port."""
    import threading

    import uvicorn

    from service.app import create_app

    app = create_app(settings, **components)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn gateway")
    return RunningGateway(app, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory, redis_server, s3_server) -> Iterator[RunningGateway]:
    """A gateway with the test settings on the session Redis and a bucket of its own, shared
    by the tests of one module (starting one per test costs seconds); use it through `gw`."""
    gateway = start_gateway(build_settings(tmp_path_factory.mktemp("gw") / "var",
                                           redis_url=redis_server.url,
                                           s3=(s3_server, s3_server.create_bucket())))
    yield gateway
    gateway.stop()


@pytest.fixture
def gw(module_gateway: RunningGateway, redis_url: str) -> RunningGateway:
    """The module's gateway with its Redis flushed and its bucket emptied for this test."""
    storage = module_gateway.context.storage
    for key in storage.list_keys():
        storage.delete(key)
    return module_gateway


@pytest.fixture
def run_gateway() -> Iterator[Callable[..., RunningGateway]]:
    """`run_gateway(settings)` serves a gateway over real HTTP until the test ends."""
    running: list[RunningGateway] = []

    def start(settings, **components) -> RunningGateway:
        gateway = start_gateway(settings, **components)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


class WebhookReceiver:
    """A loopback HTTP server recording every POST as (headers, body); it answers with the
    queued status codes, then 200. Header names are lower-cased."""

    def __init__(self, statuses: tuple[int, ...] | list[int] = (), port: int = 0) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/musicedit"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events_for(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.received if json.loads(b)["job"]["id"] == job_id]

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} webhook(s)")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def shared(request: pytest.FixtureRequest):
    """This module (`tests/conftest.py`) itself: RedisServer, S3Server, build_settings,
    start_gateway, free_port, wait_until, WebhookReceiver, API_KEYS. Test files cannot `import conftest`:
    every test folder has a conftest module of that name."""
    return request.config.pluginmanager.get_plugin(str(Path(__file__)))
