"""A job inside the engine, its windows as work items, and the handle its caller holds."""
from __future__ import annotations

import typing as tp
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from ..attention import TextKV
from .types import EditOutput, EditRequest
from .windows import Window

if tp.TYPE_CHECKING:
    from .engine import EditEngine


@dataclass
class EngineJob:
    request: EditRequest
    codes: torch.Tensor             # [K, T] input codes on the engine's device
    num_samples: int
    text: TextKV                    # rows: conditional, null
    windows: list[Window]
    output: torch.Tensor            # [K, T] generated codes, UNKNOWN until written
    future: Future
    canceled: bool = False
    steps: int = 0


@dataclass
class WindowWork:
    job: EngineJob
    window: Window


class EditHandle:
    """A submitted edit: wait for it, or cancel it."""

    def __init__(self, engine: EditEngine, job: EngineJob):
        self._engine = engine
        self._job = job

    @property
    def job_id(self) -> str:
        return self._job.request.job_id

    def cancel(self) -> None:
        """Cancel; a job holding a slot frees it at the next step boundary."""
        self._engine.cancel(self._job)

    def done(self) -> bool:
        return self._job.future.done()

    def codes(self, timeout: float | None = None) -> torch.Tensor:
        """Wait for the generated codes `[K, T]` (no audio decoding)."""
        return self._job.future.result(timeout)

    def result(self, timeout: float | None = None) -> EditOutput:
        """Wait for the codes, then decode them to audio (in the caller's thread).

        Raises:
            JobCanceled: the job was canceled.
            DeviceFailed: the engine's device failed; the job can run elsewhere.
            Exception: what failed this job (other jobs of its batch are not affected).
        """
        codes = self._job.future.result(timeout)
        return self._engine.decode(self._job, codes)
