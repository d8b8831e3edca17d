"""The one settings object: every knob is an environment variable prefixed `MUSICEDIT_`.

`get_settings()` returns a cached instance; tests build `Settings(...)` directly. No other
module reads `os.environ`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, cast

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from musicedit.routing import EngineStems

WEBHOOK_SECRET_CONTEXT = b"musicedit-webhook-v1"
WorkerRole = Literal["all", "edits", "separation"]


def hash_api_key(secret: str) -> str:
    """SHA-256 hex digest of an API key; the only form in which keys are kept in memory."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def webhook_secret_from_api_key(secret: str) -> str:
    """The per-key webhook signing secret, derivable by the key's owner (and nobody else).

    It is domain-separated from the key hash used for authentication, so knowing one does not
    give the other.
    """
    return hmac.new(secret.encode("utf-8"), WEBHOOK_SECRET_CONTEXT, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A configured API key: its public name, the SHA-256 of the secret, the webhook secret."""

    name: str
    secret_sha256: str
    webhook_secret: str

    def __repr__(self) -> str:  # never print secret material
        return f"ApiKey(name={self.name!r})"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Service, worker and storage configuration (env prefix `MUSICEDIT_`)."""

    model_config = SettingsConfigDict(env_prefix="MUSICEDIT_", extra="ignore", frozen=True)

    # --- gateway -----------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Gateway bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Gateway port.")
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = Field(
        (),
        description="Comma-separated `name:secret` pairs. Only SHA-256 hashes are kept.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated allowed CORS origins (none = no CORS)."
    )
    public_base_url: str | None = Field(
        None, description="Base URL of links to jobs. Unset: answers use the request's own "
        "URL and webhook bodies `http://HOST:PORT`; set it when clients reach the gateway "
        "through a proxy or load balancer."
    )

    stream_token_seconds: int = Field(
        60, ge=1, le=3600, description="Lifetime of a stream token (`POST "
        "/v1/edits/{id}/events/token`), the browser's credential for one job's event stream; "
        "checked when a stream opens, so an open stream outlives it."
    )
    events_heartbeat_seconds: float = Field(
        15.0, gt=0, description="An event stream sends a comment line after this many idle "
        "seconds, so proxies do not close it."
    )
    events_poll_interval_seconds: float = Field(
        0.5, gt=0, description="How often the gateway reads the jobs of its open event "
        "streams from the job store (one batched read for all streams)."
    )

    # --- embedded defaults, queue, job store -----------------------------------------
    data_dir: Path = Field(Path("./var"), description="Directory for embedded defaults.")
    broker_url: str | None = Field(
        None, description="Celery broker; default `sqla+sqlite:///<data_dir>/broker.sqlite`."
    )
    broker_visibility_timeout_seconds: int = Field(
        3600,
        ge=60,
        description="Redis broker visibility timeout. Recovery of killed workers does not "
        "depend on it (see lease_seconds); it only bounds how long an unacked message waits "
        "(restored up to 10 s after it, by any worker).",
    )
    job_store_url: str | None = Field(
        None, description="`redis://...` or `sqlite:///path`; default `<data_dir>/jobs.sqlite`."
    )
    redis_socket_timeout_seconds: float = Field(2.0, gt=0, description="Redis socket timeout.")

    # --- object storage -------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = Field("local", description="`local` or `s3`.")
    local_storage_dir: Path | None = Field(None, description="Default `<data_dir>/objects`.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint; None = AWS.")
    s3_public_endpoint_url: str | None = Field(
        None, description="S3 endpoint written into presigned download URLs, as API clients "
        "reach it (e.g. `http://localhost:9000` when the services use `http://minio:9000`); "
        "None = `S3_ENDPOINT_URL`."
    )
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_bucket: str = Field("musicedit", description="S3 bucket for inputs and results.")
    s3_access_key_id: str | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_path_style: bool = Field(False, description="Path-style addressing (MinIO, SeaweedFS).")
    s3_multipart_chunk_bytes: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart upload part size."
    )
    presign_expiry_seconds: int = Field(300, ge=1, le=7 * 24 * 3600, description="URL expiry.")

    # --- input limits ----------------------------------------------------------------
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Upload size cap.")
    max_input_seconds: float = Field(300.0, gt=0, description="Longest accepted input.")
    min_input_seconds: float = Field(0.5, ge=0, description="Shortest accepted input.")
    max_sample_rate: int = Field(192_000, ge=8000, description="Highest accepted sample rate.")
    max_channels: int = Field(
        2, ge=1, description="Most accepted channels (inclusive): mono and stereo music; "
        "surround (6 or 8 channels) must be downmixed by the client."
    )
    silence_peak_threshold: float = Field(
        1e-4, ge=0, description="Inputs whose absolute peak is below this are 'silent' "
        "(refused by the gateway and, for clips already queued, by the worker)."
    )
    stems: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Drums", "Bass", "Piano", "Guitar"],
        description="Comma-separated stems the gateway accepts in instructions; each must be "
        "one of the model's stems (a worker refuses to start otherwise).",
    )

    separator: str = Field(
        "tiny", description="Source separator for `remove`/`extract` (issue 18): a preset "
        "(`tiny`, `htdemucs_6s-random`: random weights; `htdemucs_6s`: the released Demucs "
        "weights, research use only), a Demucs `.th` file or a directory holding one, or "
        "`none` (every step runs on the generative model).")
    separation_stems: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Drums", "Bass", "Vocals", "Guitar", "Piano"],
        description="Comma-separated stems the separator removes and extracts; each must be "
        "one of the separator's sources (a worker refuses to start otherwise). Ignored with "
        "`SEPARATOR=none`.")
    separation_max_batch_segments: int = Field(
        8, ge=1, description="Most separator segments (of any jobs) computed in one forward.")

    # --- abuse limits ------------------------------------------------------------------
    rate_limit_per_minute: int = Field(
        60, ge=1, description="Submissions per key in any 60 s (sliding window).")
    max_queued_jobs_per_key: int = Field(20, ge=1, description="Queued jobs per key.")

    # --- job lifecycle ---------------------------------------------------------------
    job_retention_seconds: int = Field(
        86400, ge=1, description="Finished jobs, inputs and results are deleted after this."
    )
    dead_letter_retention_seconds: int = Field(
        7 * 86400, ge=1, description="Dead-lettered jobs (failed after MAX_ATTEMPTS abandoned "
        "attempts, or a model or storage fault) and their inputs are kept this long for "
        "inspection (`musicedit dead-letters`)."
    )
    retention_sweep_interval_seconds: float = Field(
        60.0, gt=0, description="How often the gateway and every worker delete expired jobs "
        "and their objects."
    )
    lease_seconds: int = Field(
        30, ge=1, description="Worker lease per job; renewed while running. A job whose "
        "worker died is re-run after at most lease + reaper interval."
    )
    reaper_interval_seconds: float = Field(10.0, gt=0, description="Expired-lease scan period.")
    max_attempts: int = Field(3, ge=1, description="Attempts before a job is dead-lettered.")
    worker_heartbeat_ttl_seconds: int = Field(
        30, ge=1, description="A worker is live if it heartbeated within this many seconds."
    )

    # --- webhooks --------------------------------------------------------------------
    webhook_allow_private: bool = Field(
        False, description="Allow webhooks to loopback/private/link-local addresses."
    )
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="Per-attempt timeout.")
    webhook_retries: int = Field(5, ge=0, description="Retries after the first attempt.")
    webhook_backoff_seconds: float = Field(1.0, ge=0, description="First retry delay (doubles).")

    # --- model / worker ----------------------------------------------------------------
    model: str = Field("tiny", description="Model preset name or checkpoint directory.")
    model_cache_dir: Path | None = Field(None, description="Default `<data_dir>/models`.")
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:N`.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="LM precision: auto = float16 on CUDA (the release's), float32 on "
        "the CPU; bfloat16 selectable. EnCodec and T5 stay float32.")
    max_batch_size: int = Field(8, ge=1, description="Jobs decoded together by one worker.")
    kv_cache_budget_bytes: int | None = Field(
        None, ge=1, description="Engine cache memory (bytes) for all batch slots; unset: enough "
        "for max_batch_size on the CPU; on CUDA `GPU_MEMORY_FRACTION` of the free memory minus "
        "the measured headroom of codec work, the condition pass and prefill (365 MB per slot "
        "for MusicGen-large in fp16).")
    gpu_memory_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="Share of the free GPU memory the engine plans its "
        "caches and headroom with, when the cache budget is unset.")
    codec_concurrency: int = Field(
        2, ge=1, description="Most EnCodec chunks (10 s each) encoding or decoding at once on "
        "the worker's device, from all its jobs together.")
    cuda_graphs: bool = Field(True, description="Capture the decode step of every batch and "
                              "length bucket as a CUDA graph when the engine starts, replay "
                              "them while serving. CUDA only.")
    torch_compile: bool = Field(False, description="torch.compile the decode step (slow start).")
    worker_metrics_host: str = Field("127.0.0.1", description="Worker /metrics bind address.")
    worker_metrics_port: int = Field(
        9101, ge=0, le=65535, description="Worker Prometheus port; 0 disables the endpoint."
    )
    worker_heartbeat_interval_seconds: float = Field(
        5.0, gt=0, description="How often a worker records its heartbeat in the job store."
    )
    worker_progress_interval_seconds: float = Field(
        1.0, gt=0, description="How often a running job's progress and cancel flag are synced."
    )
    worker_shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, jobs still running after this are handed back "
        "to the queue (keep it below the orchestrator's kill timeout)."
    )
    storage_retries: int = Field(
        4, ge=0, description="Worker retries of a failed storage read/write before failing."
    )
    storage_backoff_seconds: float = Field(
        1.0, ge=0, description="First storage retry delay (doubles each retry)."
    )
    worker_role: WorkerRole = Field(
        "all", description="What a worker loads and which queues it consumes: `all` (the "
        "generative model and the separator; every job), `edits` (the same models; only jobs "
        "with a generative step, leaving separation-only jobs to a separation pool), "
        "`separation` (the separator alone, no MusicGen; only jobs whose every step is a "
        "separation: a CPU or small-GPU pool).")
    log_level: str = Field("INFO", description="Log level of the worker and `musicedit serve`.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        keys: list[ApiKey] = []
        for pair in cast(list[str], _split_csv(value)):
            name, sep, secret = pair.partition(":")
            if not sep or not name.strip() or not secret:
                raise ValueError(
                    "MUSICEDIT_API_KEYS must be comma-separated `name:secret` pairs, "
                    "for example `alice:s3cret,bob:0th3r`"
                )
            keys.append(
                ApiKey(name.strip(), hash_api_key(secret), webhook_secret_from_api_key(secret))
            )
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ValueError("MUSICEDIT_API_KEYS has a duplicate key name; names must be unique")
        return tuple(keys)

    @field_validator("cors_origins", "stems", "separation_stems", mode="before")
    @classmethod
    def _parse_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("stems")
    @classmethod
    def _capitalise_stems(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("MUSICEDIT_STEMS must name at least one stem")
        return [stem[:1].upper() + stem[1:].lower() for stem in value]

    @field_validator("separation_stems")
    @classmethod
    def _capitalise_separation_stems(cls, value: list[str]) -> list[str]:
        return [stem[:1].upper() + stem[1:].lower() for stem in value]

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.min_input_seconds >= self.max_input_seconds:
            raise ValueError("MUSICEDIT_MIN_INPUT_SECONDS must be below MAX_INPUT_SECONDS")
        if self.worker_role == "separation" and not self.separation_enabled:
            raise ValueError("MUSICEDIT_WORKER_ROLE=separation needs a separator: set "
                             "MUSICEDIT_SEPARATOR and MUSICEDIT_SEPARATION_STEMS")
        return self

    @property
    def separation_enabled(self) -> bool:
        """A separator is deployed (and serves at least one stem)."""
        return self.separator.lower() != "none" and bool(self.separation_stems)

    @property
    def effective_separation_stems(self) -> list[str]:
        """The stems the separator serves here; none without one."""
        return list(self.separation_stems) if self.separation_enabled else []

    @property
    def engine_stems(self) -> EngineStems:
        """What each engine serves, for `musicedit.routing.route`."""
        return EngineStems(generative=tuple(self.stems),
                           separation=tuple(self.effective_separation_stems))

    @property
    def instruction_stems(self) -> list[str]:
        """Every stem an instruction may name (either engine's)."""
        return list(self.engine_stems.all)

    # --- derived values (embedded defaults live under data_dir) ------------------------
    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir.resolve()}/broker.sqlite"

    @property
    def effective_job_store_url(self) -> str:
        return self.job_store_url or f"sqlite:///{self.data_dir.resolve()}/jobs.sqlite"

    @property
    def effective_local_storage_dir(self) -> Path:
        return self.local_storage_dir or self.data_dir / "objects"

    @property
    def effective_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    def authenticate(self, presented_secret: str) -> ApiKey | None:
        """Return the key whose secret this is, comparing every hash in constant time."""
        digest = hash_api_key(presented_secret)
        match: ApiKey | None = None
        for key in self.api_keys:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(digest, key.secret_sha256):
                match = key
        return match

    def webhook_secret_for(self, key_name: str) -> str | None:
        """The webhook signing secret of the key named `key_name` (worker side)."""
        for key in self.api_keys:
            if key.name == key_name:
                return key.webhook_secret
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
