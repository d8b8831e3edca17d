"""`run_edit_job`: everything a worker does for one job, callable without Celery.

The job store decides whether this worker may run the job (`claim`); from then on the worker
holds a lease that a `LeaseKeeper` thread renews, so only one worker ever records a result.
The audio goes through the one shared `EditEngine`, which batches it with the other jobs
this process is running.
"""

from __future__ import annotations

import enum
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from models.audio import read_audio, write_samples
from models.edit_steps import (
    GroupDone,
    Handle,
    MissingEngine,
    StepsOutput,
    StepsProgress,
    run_steps,
)
from models.engine import DeviceFailed, JobCanceled
from musicedit.errors import (
    AudioError,
    LeaseLost,
    ObjectNotFound,
    StorageUnavailable,
    StoreUnavailable,
)
from musicedit.job_store import BaseJobStore
from musicedit.jobs import OUTPUT_MEDIA_TYPES, EditJob, JobState, ResultAudio
from musicedit.logs import log_event
from musicedit.routing import Engine
from musicedit.settings import Settings
from musicedit.storage import ObjectStorage, codes_key, result_key
from musicedit.webhooks import WebhookNotifier
from worker.housekeeping import ShutdownSignal
from worker.metrics import WorkerMetrics
from worker.sampling import engine_params, job_seed

if TYPE_CHECKING:
    from models.engine import EditEngine
    from models.separation import SeparationEngine

log = logging.getLogger("musicedit.worker")
T = TypeVar("T")
R = TypeVar("R", covariant=True)


class JobOutcome(str, enum.Enum):
    """What `run_edit_job` did with the job."""

    skipped = "skipped"        # not ours to run: finished, canceled or leased by a live worker
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    released = "released"      # handed back to the queue (shutdown)
    lease_lost = "lease_lost"  # another worker took the job over; it records the result


class JobsInFlight:
    """How many `run_edit_job` calls of this process hold a claimed job (thread-safe)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> JobsInFlight:
        with self._lock:
            self._count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._count -= 1

    def count(self) -> int:
        with self._lock:
            return self._count


@dataclass
class EditJobDeps:
    """What `run_edit_job` needs; built once per worker process by `WorkerRuntime`."""

    settings: Settings
    store: BaseJobStore
    storage: ObjectStorage
    engine: EditEngine | None      # the generative model's; none on a separation-only worker
    metrics: WorkerMetrics
    notifier: WebhookNotifier | None
    requeue: Callable[[str], None]
    shutdown: ShutdownSignal
    worker_id: str
    sleep: Callable[[float], None] = time.sleep
    in_flight: JobsInFlight = field(default_factory=JobsInFlight)
    separation: SeparationEngine | None = None  # the source separator's, where one is deployed


class _JobStopped(Exception):
    """The engine job was canceled by us; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobFailure(Exception):
    """The job cannot succeed; `message` is the error users see."""

    def __init__(self, message: str, dead_letter: bool) -> None:
        super().__init__(message)
        self.message = message
        self.dead_letter = dead_letter


class LeaseKeeper:
    """Renews the job's lease every `lease_seconds / 3` in a thread while the job runs.

    `lost` turns True if the store says another worker holds the job now; `cancel_requested`
    mirrors the job's cancel flag as of the last renewal.
    """

    def __init__(self, store: BaseJobStore, job_id: str, worker_id: str,
                 lease_seconds: float) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.lost = False
        self.cancel_requested = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                job = self.store.renew_lease(self.job_id, self.worker_id, self.lease_seconds)
                self.cancel_requested = job.cancel_requested
            except LeaseLost:
                self.lost = True
                log_event(log, "lease_lost", logging.WARNING, job_id=self.job_id)
                return
            except StoreUnavailable as exc:  # keep trying; the lease may still be saved
                log_event(log, "lease_renew_failed", logging.WARNING, job_id=self.job_id,
                          error=exc.message)


def run_edit_job(job_id: str, deps: EditJobDeps) -> JobOutcome:
    """Run job `job_id` if the job store lets this worker have it; returns what happened."""
    settings = deps.settings
    if deps.shutdown.grace_expired():
        deps.requeue(job_id)  # arrived too late in a shutdown: leave it to another worker
        log_event(log, "job_deferred", job_id=job_id, reason="worker shutting down")
        return JobOutcome.released
    claim = _retry_store(deps, job_id, "claim", lambda: deps.store.claim_or_finish(
        job_id, deps.worker_id, settings.lease_seconds))
    if claim.finished is not None:  # abandoned too often (dead-lettered) or canceled meanwhile
        outcome = (JobOutcome.canceled if claim.finished.state is JobState.canceled
                   else JobOutcome.failed)
        return _finished(claim.finished, deps, outcome)
    job = claim.job
    if job is None:
        log_event(log, "job_skipped", job_id=job_id, reason="finished, canceled or held elsewhere")
        return JobOutcome.skipped
    deps.metrics.jobs.labels(JobState.running.value).inc()
    if job.attempts == 1:
        deps.metrics.time_in_queue_seconds.observe(max(0.0, time.time() - job.timings.created_at))
    log_event(log, "job_started", job_id=job.id, attempt=job.attempts,
              instruction=job.instruction.text, input_seconds=job.input.duration_seconds)
    with deps.in_flight, LeaseKeeper(deps.store, job.id, deps.worker_id,
                                     settings.lease_seconds) as lease:
        try:
            return _run_claimed(job, deps, lease)
        except LeaseLost:
            log_event(log, "job_abandoned", logging.WARNING, job_id=job.id,
                      reason="another worker holds the job now")
            return JobOutcome.lease_lost


def _run_claimed(job: EditJob, deps: EditJobDeps, lease: LeaseKeeper) -> JobOutcome:
    try:
        with tempfile.TemporaryDirectory(prefix="musicedit-job-") as tmp:
            edited = _decode(job, deps, lease, Path(tmp))
            key = result_key(job.id, job.output_format)
            result = _write_result(job, deps, key, edited, Path(tmp))
            _report_final_progress(job, deps, edited.frames_total)
    except _JobStopped as stop:
        if stop.reason == "cancel":
            done = _retry_store(deps, job.id, "acknowledge_cancel",
                                lambda: deps.store.acknowledge_cancel(job.id, deps.worker_id))
            return _finished(done, deps, JobOutcome.canceled)
        released = _retry_store(deps, job.id, "release",
                                lambda: deps.store.release(job.id, deps.worker_id))
        if released.state is JobState.canceled:
            return _finished(released, deps, JobOutcome.canceled)
        deps.requeue(job.id)
        log_event(log, "job_released", job_id=job.id, reason=stop.reason)
        return JobOutcome.released
    except JobFailure as failure:
        message, dead_letter = failure.message, failure.dead_letter
        done = _retry_store(deps, job.id, "fail", lambda: deps.store.fail(
            job.id, deps.worker_id, message, dead_letter=dead_letter))
        return _finished(done, deps, JobOutcome.failed)
    done = _retry_store(deps, job.id, "complete",
                        lambda: deps.store.complete(job.id, deps.worker_id, key, result))
    if done.state is JobState.canceled:  # canceled while the result was being written
        for written in (key, result.codes_key):
            if written:
                _delete_quietly(deps.storage, written, job.id)
        return _finished(done, deps, JobOutcome.canceled)
    return _finished(done, deps, JobOutcome.succeeded)


@dataclass
class _Input:
    wav: np.ndarray           # [C, N] float32
    rate: int
    codes: torch.Tensor | None  # the source job's codes (an edit of an earlier result)


def _download(job: EditJob, deps: EditJobDeps, tmp: Path) -> _Input:
    """The input (and its codes, for an edit of an earlier result); raises `JobFailure`."""
    input_path = tmp / "input"
    codes = None
    try:
        _with_storage_retries(deps, job.id, "download_input",
                              lambda: deps.storage.get_to_file(job.input_key, input_path))
        if job.input_codes_key:
            codes_path = tmp / "input.codes.npy"
            codes_key_ = job.input_codes_key
            _with_storage_retries(deps, job.id, "download_input_codes",
                                  lambda: deps.storage.get_to_file(codes_key_, codes_path))
            codes = torch.from_numpy(np.load(codes_path).astype(np.int64))
    except ObjectNotFound as exc:
        raise JobFailure("The uploaded input is no longer in storage (retention or deletion); "
                         "resubmit the file.", dead_letter=False) from exc
    try:
        wav, rate = read_audio(input_path)
    except AudioError as exc:
        raise JobFailure(f"The input audio could not be read: {exc.message}",
                         dead_letter=False) from exc
    return _Input(wav, rate, codes)


def _decode(job: EditJob, deps: EditJobDeps, lease: LeaseKeeper, tmp: Path) -> StepsOutput:
    """Run the job's steps on the engines that do them (`models.edit_steps.run_steps`);
    raises `_JobStopped`/`JobFailure`."""
    if deps.engine is None and "generative" in job.instruction.engines:
        # on a separation-only worker (a requeue that could not read the job's queue): hand
        # it back to the queue of the workers that load the generative model
        raise _JobStopped("needs the generative model")
    given = _download(job, deps, tmp)
    time_range = ((job.time_range.start_seconds, job.time_range.end_seconds)
                  if job.time_range else None)
    progress = StepsProgress()

    total_reported = False

    def wait(handle: Handle[Any], engine: Engine) -> Any:
        nonlocal total_reported
        if not total_reported:  # the total is known before the engine encodes a frame
            total_reported = True
            _report_progress(job, deps, *progress.value)
        return _wait(handle, job, deps, lease, progress, engine)

    def finished(group: GroupDone) -> None:
        if group.engine == "generative":
            deps.metrics.job_decode_seconds.observe(group.seconds)
            deps.metrics.real_time_factor.observe(group.audio_seconds / max(group.seconds, 1e-9))
        else:
            deps.metrics.job_separation_seconds.observe(group.seconds)
        log_event(log, f"job_{'decoded' if group.engine == 'generative' else 'separated'}",
                  job_id=job.id, engine=group.engine, seconds=round(group.seconds, 3),
                  audio_seconds=round(group.audio_seconds, 3), steps=group.steps,
                  **group.detail)

    try:
        return run_steps(job.id, given.wav, given.rate, job.instruction.all_steps,
                         engine_params(job), generative=deps.engine,
                         separation=deps.separation, wait=wait, progress=progress,
                         time_range=time_range, codes=given.codes, on_group=finished)
    except MissingEngine as exc:
        raise JobFailure(
            f"A step of this job runs on the {exc.engine} engine, which the worker that took "
            "it does not load (MUSICEDIT_SEPARATOR=none on a worker while the gateway "
            "routes to a separator); resubmit with another `engine`, or report the job id to "
            "the operator.", dead_letter=True) from exc
    except DeviceFailed as exc:  # this worker's GPU is gone: the job is not at fault
        raise _JobStopped("device") from exc
    except AudioError as exc:
        raise JobFailure(f"The input audio cannot be edited: {exc.message}",
                         dead_letter=False) from exc
    except ValueError as exc:  # too long, a range outside the clip, parameters or a stem
        raise JobFailure(f"The job cannot be edited: {exc}; change the input, the range or "
                         "the parameters.", dead_letter=False) from exc


def _write_result(job: EditJob, deps: EditJobDeps, key: str, edited: StepsOutput,
                  tmp: Path) -> ResultAudio:
    """Compose the result in the asked shape, store it (and its codes after a generative
    step, for the next round); what was stored."""
    audio, rate = edited.compose(
        (job.time_range.start_seconds, job.time_range.end_seconds) if job.time_range else None,
        job.output.sample_rate if job.output else None,
        job.output.channels if job.output else None)
    path = tmp / f"result.{job.output_format}"
    write_samples(path, audio, rate, job.output_format)
    engines = job.instruction.engines
    models_used = ([Path(deps.settings.model).name] if "generative" in engines else []) + (
        [Path(deps.settings.separator).name] if "separation" in engines else [])
    metadata = {
        "job-id": job.id,
        "instruction": job.instruction.text,
        "engines": ",".join(engines),
        "seed": str(job_seed(job)),
        "model": ",".join(models_used),
        "sample-rate": str(rate),
        "channels": str(audio.shape[0]),
        "duration-seconds": f"{audio.shape[-1] / rate:.3f}",
    }
    codes = edited.stage.codes
    result_codes = codes_key(key) if codes is not None else None
    codes_path = tmp / "result.codes.npy"
    if codes is not None:
        np.save(codes_path, codes.cpu().numpy().astype(np.int16))

    def upload() -> None:
        with path.open("rb") as source:
            deps.storage.put_file(key, source, content_type=OUTPUT_MEDIA_TYPES[job.output_format],
                                  metadata=metadata)
        if result_codes is not None:
            with codes_path.open("rb") as source:
                deps.storage.put_file(result_codes, source, metadata={"job-id": job.id})

    _with_storage_retries(deps, job.id, "upload_result", upload)
    return ResultAudio(format=job.output_format.upper(), sample_rate=rate,
                       channels=audio.shape[0], duration_seconds=audio.shape[-1] / rate,
                       size_bytes=path.stat().st_size, codes_key=result_codes)


def _wait(handle: Handle[R], job: EditJob, deps: EditJobDeps, lease: LeaseKeeper,
          progress: StepsProgress, engine: Engine) -> R:
    """Wait for an engine (`engine` names it in logs), syncing progress and the cancel flag
    every progress interval. The engine raising for this job alone fails it (the batch goes
    on)."""
    try:
        return _wait_synced(handle, job, deps, lease, progress)
    except (_JobStopped, LeaseLost):
        raise
    except Exception as exc:
        log_event(log, "job_model_error", logging.ERROR, exc_info=exc, job_id=job.id,
                  engine=engine, error=type(exc).__name__)
        what = "model" if engine == "generative" else "separator"
        raise JobFailure(f"The {what} failed on this input ({type(exc).__name__}); check "
                         "that the audio is a normal music clip and resubmit, or report the "
                         "job id to the operator.", dead_letter=True) from exc


def _wait_synced(handle: Handle[R], job: EditJob, deps: EditJobDeps, lease: LeaseKeeper,
                 progress: StepsProgress) -> R:
    interval = deps.settings.worker_progress_interval_seconds
    reported = (0, 0)
    stop_reason: str | None = None
    while True:
        try:
            return handle.result(timeout=interval)
        except TimeoutError:
            pass
        except JobCanceled as exc:
            # not canceled by us: the engine is stopping, so hand the job back
            raise _JobStopped(stop_reason or "engine") from exc
        except DeviceFailed as exc:  # sticky device error: the worker exits, the job runs elsewhere
            raise _JobStopped("device") from exc
        if stop_reason is not None:
            continue  # already canceled: wait for the engine to free the slot
        if lease.lost:
            handle.cancel()
            raise LeaseLost(f"Worker {deps.worker_id} lost the lease of job {job.id}.")
        cancel = lease.cancel_requested
        try:
            current = progress.value
            if current != reported:
                synced = deps.store.update_progress(job.id, deps.worker_id, *current)
                reported = current
            else:
                synced = deps.store.get(job.id)
            cancel = cancel or synced.cancel_requested
        except StoreUnavailable as exc:
            log_event(log, "progress_sync_failed", logging.WARNING, job_id=job.id,
                      error=exc.message)
        if cancel:
            stop_reason = "cancel"
        elif deps.shutdown.grace_expired():
            stop_reason = "shutdown"
        if stop_reason is not None:
            log_event(log, "job_stopping", job_id=job.id, reason=stop_reason)
            handle.cancel()


def _report_final_progress(job: EditJob, deps: EditJobDeps, frames: int) -> None:
    """Progress 100% before `complete` (short jobs finish between two progress syncs)."""
    _report_progress(job, deps, frames, frames)


def _report_progress(job: EditJob, deps: EditJobDeps, done: int, total: int) -> None:
    try:
        deps.store.update_progress(job.id, deps.worker_id, done, total)
    except StoreUnavailable as exc:  # cosmetic; `complete` retries the store itself
        log_event(log, "progress_sync_failed", logging.WARNING, job_id=job.id, error=exc.message)


def _with_storage_retries(deps: EditJobDeps, job_id: str, operation: str,
                          action: Callable[[], T]) -> T:
    """Run `action`, retrying `StorageUnavailable` with exponential backoff, then fail the job."""
    retries = deps.settings.storage_retries
    for attempt in range(retries + 1):
        try:
            return action()
        except StorageUnavailable as exc:
            if attempt == retries:
                log_event(log, "storage_gave_up", logging.ERROR, job_id=job_id,
                          operation=operation, attempts=attempt + 1, error=exc.message)
                raise JobFailure(
                    f"Object storage was unreachable for {attempt + 1} attempts ({operation}); "
                    "resubmit the job later. The operator has a dead-letter record of it.",
                    dead_letter=True) from exc
            delay = deps.settings.storage_backoff_seconds * 2 ** attempt
            log_event(log, "storage_retry", logging.WARNING, job_id=job_id, operation=operation,
                      attempt=attempt + 1, delay_seconds=delay, error=exc.message)
            deps.sleep(delay)
    raise AssertionError("unreachable")


def _retry_store(deps: EditJobDeps, job_id: str, operation: str, action: Callable[[], T]) -> T:
    """Run a job-store transition, retrying `StoreUnavailable` (a Redis restart) for up to one
    lease period; the lease keeps the job ours meanwhile, and past that the reaper recovers it."""
    deadline = time.monotonic() + deps.settings.lease_seconds
    delay = 0.5
    while True:
        try:
            return action()
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log_event(log, "store_retry", logging.WARNING, job_id=job_id, operation=operation,
                      delay_seconds=delay, error=exc.message)
            deps.sleep(delay)
            delay = min(delay * 2, 5.0)


def _finished(done: EditJob, deps: EditJobDeps, outcome: JobOutcome) -> JobOutcome:
    deps.metrics.jobs.labels(done.state.value).inc()
    fields: dict[str, Any] = {"error": done.error} if done.error else {}
    level = logging.WARNING if done.state is JobState.failed else logging.INFO
    log_event(log, f"job_{done.state.value}", level, job_id=done.id, attempt=done.attempts,
              dead_lettered=done.dead_lettered, **fields)
    if deps.notifier is not None:
        deps.notifier.notify(done)
    return outcome


def _delete_quietly(storage: ObjectStorage, key: str, job_id: str) -> None:
    try:
        storage.delete(key)
    except StorageUnavailable:
        log_event(log, "object_delete_failed", logging.WARNING, job_id=job_id, object_key=key)
