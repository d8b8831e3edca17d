"""What the decoding engine and the separation engine share around their steps: the background
thread that runs the steps, cancel requests from callers' threads, and the sticky device failure
that stops an engine for good.

Cancel requests are queued by any thread and applied by the engine thread at a step boundary
(a job is never torn down in the middle of a forward). A sticky device error (an illegal memory
access: `errors.is_fatal_device_error`) makes every later device call fail the same way, so the
engine makes none: it hands every job back with `DeviceFailed` (they can run on another
worker), refuses new ones and calls `on_fatal` once (the worker exits).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from musicedit.logs import log_event

from .errors import DeviceFailed, JobCanceled, is_fatal_device_error

J = TypeVar("J")


class EngineLifecycle(Generic[J]):
    """Mixin of `EditEngine` and `SeparationEngine`.

    The engine calls `_init_lifecycle` in its constructor (with the event its scheduler sets
    when work arrives) and implements `_step` (one step: False when there was nothing to do),
    `_job_id`, `_fail_job` (fail a job wherever it is) and `_take_all_jobs` (remove every job,
    running or waiting, and return them); `_device_context` optionally (the CUDA stream its
    steps run on).
    """

    _engine_name: str = "engine"  # in messages, the thread's name and the log events

    def _init_lifecycle(self, on_fatal: Callable[[BaseException], None] | None,
                        wakeup: threading.Event) -> None:
        self._on_fatal = on_fatal
        self._wakeup = wakeup
        self._cancel_lock = threading.Lock()
        self._cancel_requests: list[J] = []
        self._failure_lock = threading.Lock()
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the engine implements ----------------------------------------------------
    def _step(self) -> bool:
        raise NotImplementedError

    def _device_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _job_id(self, job: J) -> str:
        raise NotImplementedError

    def _fail_job(self, job: J, exc: BaseException) -> None:
        raise NotImplementedError

    def _take_all_jobs(self) -> list[J]:
        raise NotImplementedError

    # --- the background thread ----------------------------------------------------------
    def start(self) -> None:
        """Run steps on a daemon thread until `stop` (or a device failure)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self._engine_name.replace(" ", "-"),
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        log = logging.getLogger(type(self).__module__)
        with self._device_context():
            while not self._stop.is_set() and self._failure is None:
                try:
                    worked = self.step()
                except Exception:  # keep serving other jobs; _step already failed the jobs
                    log.exception("%s step failed", self._engine_name)
                    worked = True
                if not worked:
                    self._wakeup.wait(0.05)
                    self._wakeup.clear()

    def step(self) -> bool:
        """One step (apply cancellations, admit work, run the batch). False if idle or the
        device failed; a fatal device error stops the engine (`_device_failed`)."""
        if self._failure is not None:
            return False
        with self._device_context():
            try:
                return self._step()
            except Exception as exc:
                if is_fatal_device_error(exc):
                    self._device_failed(exc)
                    return False
                raise

    def _wake(self) -> None:
        self._wakeup.set()

    # --- cancellation ----------------------------------------------------------------------
    def cancel(self, job: J) -> None:
        """Cancel `job` (any thread): it gets `JobCanceled` at the next step boundary."""
        with self._cancel_lock:
            self._cancel_requests.append(job)
        self._wake()

    def _apply_cancellations(self) -> None:
        with self._cancel_lock:
            requests, self._cancel_requests = self._cancel_requests, []
        for job in requests:
            job.canceled = True  # type: ignore[attr-defined]
            self._fail_job(job, JobCanceled(f"job {self._job_id(job)} was canceled"))

    # --- device failure ----------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self._failure is not None

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise DeviceFailed(f"the {self._engine_name} stopped after a device error "
                               f"({self._failure}); this worker takes no more jobs")

    def _device_failed(self, exc: BaseException) -> None:
        """A sticky device error: stop, hand every job back (`DeviceFailed`), tell the worker.
        No device call is made from here on (each would fail the same way)."""
        with self._failure_lock:
            if self._failure is not None:
                return
            self._failure = exc
        log_event(logging.getLogger(type(self).__module__),
                  f"{self._engine_name.replace(' ', '_')}_device_failed",
                  logging.CRITICAL, exc_info=exc, error=f"{type(exc).__name__}: {exc}")
        error = DeviceFailed(f"the worker's device failed ({type(exc).__name__}: {exc}); the "
                             "job can run on another worker")
        for job in self._take_all_jobs():
            future = job.future  # type: ignore[attr-defined]
            if not future.done():
                future.set_exception(error)
        self._stop.set()
        self._wake()
        if self._on_fatal is not None:
            self._on_fatal(exc)
