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
    """A job inside the engine.

    Attributes:
        codes: `[K, T]` codes the current step edits (the input's for step 0, step n - 1's
            output after), on the engine's device.
        texts: each step's text keys/values (rows: conditional, null).
        frame_range: `(start, end)` frames edited; windows cover only this range.
        output: `[K, T]` the current step's codes: the input's outside the range, generated
            inside as windows finish.
        step: index of the step decoding now.
        steps: decode steps run so far (all steps, all windows).
    """

    request: EditRequest
    codes: torch.Tensor
    num_samples: int
    texts: list[TextKV]
    frame_range: tuple[int, int]
    windows: list[Window]
    output: torch.Tensor
    future: Future
    canceled: bool = False
    step: int = 0
    steps: int = 0

    @property
    def frames_total(self) -> int:
        """Frames to generate over all steps (the unit of progress)."""
        return len(self.texts) * (self.frame_range[1] - self.frame_range[0])


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
