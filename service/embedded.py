"""`musicedit serve`: the gateway in this process and one worker as a child process.

With the embedded defaults (SQLite job store, Celery over SQLite, files on disk, the `tiny`
model on the CPU) this is the whole service on one machine, with no Redis, S3 or GPU. The
worker is started by its command line (`python -m cli worker`): the gateway imports nothing
of it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from musicedit.errors import MusiceditError
from musicedit.logs import configure_logging
from musicedit.settings import Settings
from service.app import create_app

WORKER_COMMAND = [sys.executable, "-m", "cli", "worker"]


def dev_api_key(data_dir: Path) -> str:
    """A random key kept in `<data_dir>/dev-api-key`, so it survives restarts of `serve`."""
    path = data_dir / "dev-api-key"
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def usage_banner(base_url: str, api_key: str | None, storage_backend: str = "local") -> str:
    """What `serve` prints once a worker is ready: the URL, the dev key, curl commands."""
    key = api_key or "<one of your MUSICEDIT_API_KEYS secrets>"
    auth = f'-H "Authorization: Bearer {key}"'
    audio_url = f"{base_url}/v1/edits/JOB_ID/audio"
    if storage_backend == "s3":
        # 302 to a presigned URL: fetch it without the key (curl -L before 7.83 forwards the
        # Authorization header to the same host on another port, and S3 refuses both at once)
        download = [
            f"  URL=$(curl -s -o /dev/null -w '%{{redirect_url}}' {auth} {audio_url})",
            '  curl -s -o edited.wav "$URL"',
        ]
    else:  # local storage: the gateway answers with the file itself
        download = [f"  curl -s {auth} -o edited.wav {audio_url}"]
    return "\n".join([
        f"musicedit is ready on {base_url} (API docs: {base_url}/docs)",
        *([f"dev API key (saved in the data dir): {api_key}"] if api_key else []),
        "submit an edit:",
        f'  curl -s {auth} -F file=@song.wav -F instruction="Add drums" {base_url}/v1/edits',
        "poll it (use the id from the answer):",
        f"  curl -s {auth} {base_url}/v1/edits/JOB_ID",
        "download the result:",
        *download,
        "Ctrl-C stops the gateway and the worker.",
    ])


def serve(settings: Settings) -> int:
    """Run the gateway and one worker until Ctrl-C or SIGTERM; 0 if both stopped cleanly.

    Without `MUSICEDIT_API_KEYS` a dev key is made (`dev_api_key`). If the worker dies the
    gateway stops too; on the way out the worker gets SIGTERM (warm shutdown: its jobs finish
    or go back to the queue).
    """
    configure_logging(settings.log_level)
    data_dir = settings.data_dir.resolve()
    overrides: dict[str, str] = {"MUSICEDIT_DATA_DIR": str(data_dir)}
    dev_key = None
    if not settings.api_keys:
        dev_key = dev_api_key(data_dir)
        overrides["MUSICEDIT_API_KEYS"] = f"dev:{dev_key}"
    settings = Settings(**{name.removeprefix("MUSICEDIT_").lower(): value  # type: ignore[arg-type]
                           for name, value in overrides.items()})
    worker = subprocess.Popen(
        WORKER_COMMAND,
        env={**os.environ, **overrides},
        start_new_session=True,  # Ctrl-C reaches only this process, which stops the worker
    )
    app = create_app(settings)
    store = app.state.context.store
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, http="httptools", loop="uvloop",
        log_config=None, access_log=False,
        timeout_graceful_shutdown=5))  # open event streams would hold Ctrl-C forever
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base_url = f"http://{host}:{settings.port}"

    def supervise() -> None:
        announced = False
        while worker.poll() is None and not server.should_exit:
            if not announced and server.started:
                try:
                    ready = bool(store.live_workers(settings.worker_heartbeat_ttl_seconds))
                except MusiceditError:
                    ready = False
                if ready:
                    print(usage_banner(base_url, dev_key, settings.storage_backend), flush=True)
                    announced = True
            time.sleep(0.5)
        if worker.poll() is not None and not server.should_exit:
            print(f"error: the worker exited with code {worker.returncode}; stopping",
                  file=sys.stderr, flush=True)
            server.should_exit = True

    print(f"starting musicedit on {base_url}; the worker is loading the model...", flush=True)
    threading.Thread(target=supervise, name="supervise-worker", daemon=True).start()
    # uvicorn re-raises the signal that stopped it: make SIGTERM land here like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown: jobs finish or go back
            try:
                worker.wait(timeout=settings.worker_shutdown_grace_seconds + 15)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                worker.kill()
                worker.wait()
    return 0 if worker.returncode in (0, -signal.SIGTERM) else 1
