"""The `MUSICEDIT_*` values that wire a gateway and its workers to the local services.

One dictionary of setting names to strings serves both an in-process `Settings(**values)`
and a child process's environment (`child_env(values)`).
"""

from __future__ import annotations

import os
from pathlib import Path

from local_stack.servers import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server

REPO = Path(__file__).resolve().parents[1]

# API keys of a stack: name -> secret.
API_KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}

# Limits small enough for tests to reach them on purpose, loose enough for any test clip.
SMALL_LIMITS: dict[str, object] = {
    "max_upload_bytes": 4 * 1024 * 1024,
    "max_input_seconds": 30.0,
    "rate_limit_per_minute": 1000,
    "max_queued_jobs_per_key": 100,
}


def stack_values(
    data_dir: Path,
    *,
    redis_url: str | None = None,
    s3: tuple[S3Server, str] | None = None,
    keys: dict[str, str] | None = None,
    limits: dict[str, object] | None = None,
    **overrides: object,
) -> dict[str, str]:
    """Settings values (names without the `MUSICEDIT_` prefix) for one stack.

    Args:
        data_dir: the stack's data directory (embedded job store, broker and files unless
            `redis_url` and `s3` say otherwise).
        redis_url: job store and Celery broker.
        s3: the S3 server and the bucket to store inputs and results in.
        keys: the API keys, name -> secret; default `API_KEYS` (or pass `api_keys` as the
            setting's string).
        limits: upload, length and rate limits; default `SMALL_LIMITS`, `{}` for the
            service's own defaults.
        overrides: any other setting.
    """
    keys = API_KEYS if keys is None else keys
    values: dict[str, object] = {
        "data_dir": data_dir,
        "api_keys": ",".join(f"{name}:{secret}" for name, secret in keys.items()),
        **(SMALL_LIMITS if limits is None else limits),
    }
    if redis_url is not None:
        values.update(job_store_url=redis_url, broker_url=redis_url)
    if s3 is not None:
        server, bucket = s3
        values.update(
            storage_backend="s3", s3_endpoint_url=server.endpoint_url, s3_bucket=bucket,
            s3_access_key_id=S3_ACCESS_KEY, s3_secret_access_key=S3_SECRET_KEY,
            s3_path_style="true", s3_region="us-east-1",
        )
    values.update(overrides)
    return {name: str(value) for name, value in values.items()}


def child_env(values: dict[str, str]) -> dict[str, str]:
    """This process's environment without any `MUSICEDIT_*` of the developer, plus `values`
    as `MUSICEDIT_*` variables, with the repository importable."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MUSICEDIT_")}
    env.update({f"MUSICEDIT_{name.upper()}": value for name, value in values.items()})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
