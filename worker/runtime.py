"""One worker process: the model and engine (loaded once), job store, storage, background threads.

Every Celery task thread of the process submits to the same `EditEngine`; that shared engine
is what lets concurrently running jobs share a decode batch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from musicedit.instructions import TEMPLATES
from musicedit.job_store import make_job_store
from musicedit.logs import log_event
from musicedit.queue import worker_queues
from musicedit.retention import sweep_expired
from musicedit.settings import Settings
from musicedit.storage import make_storage
from musicedit.webhooks import WebhookNotifier
from worker.edit_job import EditJobDeps, JobsInFlight
from worker.housekeeping import LeaseReaper, PeriodicThread, ShutdownSignal
from worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from models.engine import EditEngine
    from models.separation import LoadedSeparator, SeparationEngine

log = logging.getLogger("musicedit.worker")
# What the separator does (models.separation.OPERATIONS, without importing torch here).
SEPARATION_OPERATIONS = ("remove", "extract")


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


@dataclass
class WorkerRuntime:
    deps: EditJobDeps
    threads: list[PeriodicThread] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings, requeue: Callable[[str], None],
              queue_depth: Callable[[str], int] | None = None) -> WorkerRuntime:
        """Load the models of the worker's role (`MUSICEDIT_WORKER_ROLE`: Instruct-MusicGen
        unless `separation`; the separator wherever one is deployed), start their engines,
        the metrics endpoint and the background threads.

        Raises:
            UnsupportedStems: `MUSICEDIT_STEMS` or `MUSICEDIT_SEPARATION_STEMS` names a stem
                its model does not serve (the gateway would accept instructions it cannot
                follow).
        """
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        metrics = WorkerMetrics()
        in_flight = JobsInFlight()
        shutdown = ShutdownSignal()
        device = resolve_device(settings.device)

        def on_fatal(exc: BaseException) -> None:
            exit_after_device_failure(in_flight, shutdown)

        started = time.perf_counter()
        # the separator's weights first: the generative engine plans its caches with what is
        # free after them, the separation engine its batch with what the caches leave
        separator = load_worker_separator(settings, device) if settings.separation_enabled \
            else None
        engine = (start_generative_engine(settings, device, metrics, on_fatal)
                  if settings.worker_role != "separation" else None)
        separation = (start_separation_engine(settings, separator, metrics, on_fatal)
                      if separator is not None else None)
        load_seconds = time.perf_counter() - started
        metrics.model_load_seconds.set(load_seconds)
        log_event(log, "model_loaded", model=settings.model if engine else None,
                  separator=settings.separator if separation else None, device=device,
                  role=settings.worker_role, seconds=round(load_seconds, 2),
                  worker_id=worker_id)
        if device.startswith("cuda"):
            metrics.watch_cuda()
        store = make_job_store(settings)
        storage = make_storage(settings)
        deps = EditJobDeps(
            settings=settings, store=store, storage=storage, engine=engine, metrics=metrics,
            notifier=WebhookNotifier(settings), requeue=requeue, shutdown=shutdown,
            worker_id=worker_id, in_flight=in_flight, separation=separation,
        )
        runtime = cls(deps)
        metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)
        info = heartbeat_info(settings, device, engine is not None, separation is not None)

        def heartbeat() -> None:
            active = waiting = 0
            for stats in ([engine.stats()] if engine else []) + (
                    [separation.stats()] if separation else []):
                active += stats.active_jobs
                waiting += stats.waiting_jobs
            store.register_worker_heartbeat(
                worker_id, {**info, "active_jobs": active, "waiting_jobs": waiting,
                            "shutting_down": deps.shutdown.requested})

        reaper = LeaseReaper(store, requeue, settings.lease_seconds, queue_depth=queue_depth)
        runtime.threads = [
            PeriodicThread("heartbeat", settings.worker_heartbeat_interval_seconds, heartbeat),
            PeriodicThread("lease-reaper", settings.reaper_interval_seconds, reaper.run_once),
            PeriodicThread("retention-sweep", settings.retention_sweep_interval_seconds,
                           lambda: sweep_expired(store, storage)),
        ]
        for thread in runtime.threads:
            thread.start()
        log_event(log, "worker_ready", worker_id=worker_id, max_batch_size=settings.max_batch_size,
                  metrics_port=settings.worker_metrics_port)
        return runtime

    def stop(self) -> None:
        """Stop background threads, the engine and the metrics endpoint (after tasks ended)."""
        for thread in self.threads:
            thread.stop()
        if self.deps.engine is not None:
            self.deps.engine.stop()
        if self.deps.separation is not None:
            self.deps.separation.stop()
        if self.deps.notifier is not None:
            self.deps.notifier.close()
        self.deps.store.close()
        log_event(log, "worker_stopped", worker_id=self.deps.worker_id)


def start_generative_engine(settings: Settings, device: str, metrics: WorkerMetrics,
                            on_fatal: Callable[[BaseException], None]) -> EditEngine:
    """Load Instruct-MusicGen and start its engine.

    Raises:
        UnsupportedStems: `MUSICEDIT_STEMS` names a stem the model was not trained on (the
            gateway would accept instructions the model cannot follow).
    """
    import torch

    from models.engine import EditEngine, EngineConfig
    from models.loader import UnsupportedStems, load_model
    from models.presets import resolve_model

    dtype = None if settings.dtype == "auto" else getattr(torch, settings.dtype)
    model = load_model(resolve_model(settings.model, settings.effective_model_cache_dir),
                       device=device, dtype=dtype)
    unsupported = [stem for stem in settings.stems if stem not in model.stems]
    if unsupported:
        raise UnsupportedStems(
            f"MUSICEDIT_STEMS lists {', '.join(unsupported)}, which model {settings.model!r} "
            f"was not trained on; set MUSICEDIT_STEMS to some of {','.join(model.stems)}")
    engine = EditEngine(model, EngineConfig(
        max_batch_size=settings.max_batch_size,
        kv_cache_budget_bytes=settings.kv_cache_budget_bytes,
        gpu_memory_fraction=settings.gpu_memory_fraction,
        codec_concurrency=settings.codec_concurrency,
        max_input_seconds=settings.max_input_seconds,
        use_cuda_graphs=settings.cuda_graphs,
        compile=settings.torch_compile,
        silence_peak_threshold=settings.silence_peak_threshold,
        on_step=metrics.on_step,
        on_fatal=on_fatal,
    ))
    engine.start()
    metrics.watch_engine(lambda: engine.stats().active_jobs,
                         lambda: engine.stats().graph_capture_failures)
    return engine


def load_worker_separator(settings: Settings, device: str) -> LoadedSeparator:
    """The configured source separator's weights.

    Raises:
        UnsupportedStems: `MUSICEDIT_SEPARATION_STEMS` names a stem the separator does not
            separate.
    """
    from models.loader import UnsupportedStems
    from models.separation import load_separator, resolve_separator

    separator = load_separator(
        resolve_separator(settings.separator, settings.effective_model_cache_dir), device=device)
    unsupported = [s for s in settings.separation_stems if s not in separator.stems]
    if unsupported:
        raise UnsupportedStems(
            f"MUSICEDIT_SEPARATION_STEMS lists {', '.join(unsupported)}, which separator "
            f"{settings.separator!r} does not separate; set it to some of "
            f"{','.join(separator.stems)}")
    return separator


def start_separation_engine(settings: Settings, separator: LoadedSeparator,
                            metrics: WorkerMetrics,
                            on_fatal: Callable[[BaseException], None]) -> SeparationEngine:
    from models.separation import SeparationConfig, SeparationEngine

    engine = SeparationEngine(separator, SeparationConfig(
        max_batch_segments=settings.separation_max_batch_segments,
        gpu_memory_fraction=settings.gpu_memory_fraction,
        max_input_seconds=settings.max_input_seconds,
        silence_peak_threshold=settings.silence_peak_threshold,
        on_step=metrics.on_separation_step,
        on_fatal=on_fatal,
    ))
    engine.start()
    metrics.watch_separation(lambda: engine.stats().active_jobs)
    return engine


def heartbeat_info(settings: Settings, device: str, generative: bool,
                   separation: bool) -> dict[str, Any]:
    """What a worker serves, for `GET /v1/capabilities` (`musicedit.capabilities`)."""
    engines: dict[str, dict[str, list[str]]] = {}
    if generative:
        engines["generative"] = {"stems": list(settings.stems), "operations": list(TEMPLATES)}
    if separation:
        engines["separation"] = {"stems": list(settings.effective_separation_stems),
                                 "operations": list(SEPARATION_OPERATIONS)}
    stems = list(dict.fromkeys(s for served in engines.values() for s in served["stems"]))
    operations = [op for op in TEMPLATES
                  if any(op in served["operations"] for served in engines.values())]
    return {"hostname": socket.gethostname(), "pid": os.getpid(),
            "model": settings.model if generative else settings.separator,
            "separator": settings.separator if separation else None,
            "role": settings.worker_role, "queues": list(worker_queues(settings.worker_role)),
            "device": device, "max_batch_size": settings.max_batch_size,
            "metrics_port": settings.worker_metrics_port,
            "engines": engines, "stems": stems, "operations": operations}


# Exit status of a worker whose GPU hit a sticky error (EX_SOFTWARE): its orchestrator
# restarts it on a fresh CUDA context; its jobs run on healthy workers meanwhile.
DEVICE_FAILED_EXIT_CODE = 70
# How long the task threads get to hand their jobs back before the process exits.
DEVICE_FAILED_HANDBACK_SECONDS = 5.0


def exit_after_device_failure(in_flight: JobsInFlight, shutdown: ShutdownSignal,
                              exit: Callable[[int], None] = os._exit,
                              handback_seconds: float = DEVICE_FAILED_HANDBACK_SECONDS) -> None:
    """The engine's `on_fatal`: a sticky device error makes every later step fail while the
    heartbeat would stay healthy (a black hole for jobs). The engine has already handed every
    job back (`DeviceFailed`: the task threads release them to the queue); from now on the
    worker claims nothing (`shutdown` with no grace: a message it still receives goes back to
    the queue unclaimed); its task threads get up to `handback_seconds`, then the process
    exits non-zero. Leases of anything not handed back expire as after a crash."""
    shutdown.begin(0.0)
    log_event(log, "worker_exiting", logging.CRITICAL, reason="device failed",
              exit_code=DEVICE_FAILED_EXIT_CODE)

    def wait_then_exit() -> None:
        deadline = time.monotonic() + handback_seconds
        while in_flight.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        exit(DEVICE_FAILED_EXIT_CODE)

    threading.Thread(target=wait_then_exit, name="device-failed-exit", daemon=True).start()


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: Settings, requeue: Callable[[str], None],
                queue_depth: Callable[[str], int] | None = None) -> WorkerRuntime:
    """The process's runtime, started on first use (Celery starts it at `worker_init`)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime.start(settings, requeue, queue_depth)
        return _runtime


def current_runtime() -> WorkerRuntime | None:
    return _runtime


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
