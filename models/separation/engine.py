"""The separation engine: the overlapping segments of many users' inputs share each forward.

Layers, as in the decoding engine (:mod:`models.engine`): a FIFO
:class:`~models.engine.scheduler.Scheduler` holds submitted jobs; at each step the engine
admits them and takes the next segments (:mod:`models.separation.segments`) of its jobs, oldest
job first, up to the batch the memory plan allows; the runner (:meth:`SeparationEngine._forward`)
computes them, as one stacked forward on a GPU or one forward a segment on ``cpu_workers``
threads on a CPU (where a stacked batch costs more per segment: docs/separation.md); each
output is overlap-added into its own job's accumulator. The model
(:class:`demucs.htdemucs.HTDemucs`) only defines math.

Memory: a job's input and its one accumulator (the stems its edits combine, see
:mod:`models.separation.mixing`) live on the host, at the separator's rate; the device holds
one batch of segment windows at a time, so a 5-minute input needs no more device memory than
a 10-second one. Work done per job in the caller's thread: validation, resampling to 44.1 kHz
(submit), the final normalisation, resampling back and mixing (``result``).

Failures, as in the decoder: a forward that raises is narrowed down to the job(s) it raised for
(:func:`~models.engine.isolation.run_narrowing`); a sticky device error stops the engine, hands
every job back with :class:`~models.engine.errors.DeviceFailed` and calls ``on_fatal``.
"""
from __future__ import annotations

import logging
import threading
import time
import typing as tp
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from musicedit.logs import log_event

from .. import audio
from ..engine.errors import InputTooLong, is_fatal_device_error
from ..engine.isolation import run_narrowing
from ..engine.lifecycle import EngineLifecycle
from ..engine.scheduler import Scheduler
from .loader import LoadedSeparator
from .memory import batch_for_budget, measure_forward
from .mixing import StemMix, from_separator_output, plan_mix, to_separator_input
from .segments import (
    Segment,
    divide_by_weight_sum,
    plan_segments,
    read_window,
    segment_length,
    transition_weight,
)
from .types import (
    SeparationConfig,
    SeparationOutput,
    SeparationRequest,
    SeparationStats,
    SeparationStep,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SeparationJob:
    """A job inside the engine.

    Attributes:
        original: ``[C, N]`` float32, the input as given.
        x: ``[C', N']`` float32 on the host, the input at the separator's rate and channels.
        shift, scale: 0-dim float32, demucs's normalisation of the mix (its mean and std).
        coef: ``[S]`` float32 on the device, the stems' coefficients in the result.
        acc: ``[C', N']`` float32 on the host, allocated at admission: the weighted sum of the
            segments' combined stems; normalised in place, it becomes the output.
    """

    request: SeparationRequest
    original: torch.Tensor
    x: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    mix: StemMix
    coef: torch.Tensor
    segments: list[Segment]
    future: Future = field(default_factory=Future)
    acc: torch.Tensor | None = None
    next_segment: int = 0
    done_segments: int = 0
    canceled: bool = False
    output: SeparationOutput | None = None
    error: Exception | None = None
    finish_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_id(self) -> str:
        return self.request.job_id


Work = tuple[SeparationJob, Segment]


class SeparationHandle:
    """A submitted separation: wait for it, or cancel it."""

    def __init__(self, engine: SeparationEngine, job: SeparationJob):
        self._engine = engine
        self._job = job

    @property
    def job_id(self) -> str:
        return self._job.job_id

    def cancel(self) -> None:
        """Cancel; the job's remaining segments are dropped at the next step boundary."""
        self._engine.cancel(self._job)

    def done(self) -> bool:
        return self._job.future.done()

    def result(self, timeout: float | None = None) -> SeparationOutput:
        """Wait for the segments, then mix the result (in the caller's thread).

        Raises:
            JobCanceled: the job was canceled.
            DeviceFailed: the engine's device failed; the job can run elsewhere.
            models.audio.NonFiniteAudio: the separator produced NaN/inf for this input.
            Exception: what failed this job (other jobs of its batches are not affected).
        """
        self._job.future.result(timeout)
        return self._engine.finish(self._job)


class SeparationEngine(EngineLifecycle[SeparationJob]):
    """Batched source separation for many concurrent jobs.

    `submit` may be called from any thread; the loop runs in one background thread
    (`start`) or is driven by hand with :meth:`step` (tests, benchmarks).
    """

    def __init__(self, separator: LoadedSeparator, config: SeparationConfig | None = None):
        config = config or SeparationConfig()
        self.separator = separator
        self.model = separator.model
        self.config = config
        self.device = separator.device
        self.dtype = config.dtype or torch.float32
        if self.dtype != torch.float32 and self.device.type != "cuda":
            raise ValueError(f"{self.dtype} runs under CUDA autocast; on {self.device.type} "
                             "the separator runs in float32")
        self.segment_samples = segment_length(separator.sample_rate, separator.segment_seconds)
        plan_segments(1, self.segment_samples, config.overlap, self.model.valid_length)
        self.weight = transition_weight(self.segment_samples, config.transition_power)
        self.memory_plan: dict[str, int] = {}
        self.batch_segments = self._plan_batch()
        # Stacking segments pays on a GPU; on a CPU a stacked batch is slower per segment than
        # single forwards (measured: docs/separation.md), so the segments share the cores.
        self.stack = config.stack if config.stack is not None else self.device.type == "cuda"
        self._pool = None
        if not self.stack and config.cpu_workers > 1:
            self._pool = ThreadPoolExecutor(config.cpu_workers, "separation-forward")
        self.scheduler: Scheduler[SeparationJob] = Scheduler()
        self.active: list[SeparationJob] = []
        self._init_lifecycle(config.on_fatal, self.scheduler.wakeup)
        self.steps_total = 0
        self.segments_total = 0
        self.audio_seconds_total = 0.0
        self.isolated_steps_total = 0

    @property
    def stems(self) -> tuple[str, ...]:
        """The stems this engine removes and extracts, as the API spells them."""
        return self.separator.stems

    def _plan_batch(self) -> int:
        config = self.config
        if config.max_batch_segments < 1:
            raise ValueError("max_batch_segments must be at least 1")
        if self.device.type != "cuda":
            return config.max_batch_segments
        torch.cuda.synchronize(self.device)
        budget = config.memory_budget_bytes
        if budget is None:
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * config.gpu_memory_fraction)
        one, two = (measure_forward(self, n) for n in (1, 2))
        batch = batch_for_budget(one, two, config.max_batch_segments, budget)
        self.memory_plan = dict(budget=budget, forward_peak_1=one, forward_peak_2=two,
                                batch_segments=batch)
        log_event(log, "separation_memory_plan", **tp.cast(dict[str, tp.Any], self.memory_plan))
        return batch

    # ----------------------------------------------------------- submission
    def submit(self, request: SeparationRequest) -> SeparationHandle:
        """Validate and resample the input (in the caller's thread) and queue the job.

        Raises:
            InputTooLong, musicedit.errors.InvalidAudio, musicedit.errors.UnsupportedAudio,
            UnsupportedOperation, UnknownStem: the request cannot run.
            DeviceFailed: the engine's device failed.
        """
        self._raise_if_failed()
        separator = self.separator
        mix = plan_mix(request.edits, separator.stems)
        original = audio.checked_samples(request.wav, self.config.silence_peak_threshold)
        seconds = original.shape[-1] / request.sample_rate
        if seconds > self.config.max_input_seconds:
            raise InputTooLong(f"the input is {seconds:.1f} s; the separator accepts at most "
                               f"{self.config.max_input_seconds:g} s")
        x = to_separator_input(original, request.sample_rate, separator.sample_rate,
                               separator.channels)
        reference = x.mean(dim=0)
        segments = []
        if mix.coefficients:
            segments = plan_segments(x.shape[-1], self.segment_samples, self.config.overlap,
                                     self.model.valid_length)
        coef = mix.vector(len(separator.sources)).to(self.device)
        job = SeparationJob(request, original, x, reference.mean(), reference.std(), mix, coef,
                            segments)
        del reference
        job.future.set_running_or_notify_cancel()
        if segments:
            self.scheduler.submit(job)
        else:  # every stem the edits name was dropped again: nothing to separate
            job.future.set_result(None)
        return SeparationHandle(self, job)

    def finish(self, job: SeparationJob) -> SeparationOutput:
        """The job's result from its accumulated segments (in the caller's thread): demucs's
        normalisation undone, back to the input's rate and channels, mixed with the input."""
        with job.finish_lock:
            if job.error is not None:
                raise job.error
            if job.output is None:
                try:
                    job.output = self._mix(job)
                except Exception as exc:
                    job.error = exc
                    raise
            return job.output

    def _mix(self, job: SeparationJob) -> SeparationOutput:
        request, original = job.request, job.original
        channels, length = original.shape
        if job.acc is None:
            stems = torch.zeros_like(original)
        else:
            total = sum(job.mix.coefficients.values())
            combined = divide_by_weight_sum(job.acc, job.segments, self.weight)
            combined.mul_(job.scale).add_(job.shift * total)
            stems = from_separator_output(combined, self.separator.sample_rate,
                                          request.sample_rate, channels, length)
            job.acc = None
        # In place: the accumulator (or its resampled copy) becomes the output buffer.
        out = stems.add_(original) if job.mix.keep_input else stems
        if not audio.all_finite(out):
            raise audio.NonFiniteAudio(f"the separator produced non-finite samples for job "
                                       f"{job.job_id}")
        return SeparationOutput(out, request.sample_rate, len(job.segments))

    def stats(self) -> SeparationStats:
        return SeparationStats(len(self.active), self.scheduler.waiting(), self.batch_segments,
                               self.steps_total, self.segments_total, self.audio_seconds_total,
                               self.isolated_steps_total, self._failure is not None)

    # ----------------------------------------------------------- one step
    def _step(self) -> bool:
        self._apply_cancellations()
        self._admit()
        work = self._take(self.batch_segments)
        if not work:
            return False
        started = time.perf_counter()
        failed: list[tuple[Work, Exception]] = []
        done = run_narrowing(work, self._forward, lambda item, error: failed.append((item, error)))
        isolated = len(done) != 1 or bool(failed)
        if isolated:
            self._isolated(work, failed)
        try:
            segments = self._overlap_add(done)
        except Exception as exc:
            if not is_fatal_device_error(exc):
                # Bookkeeping after the forward, which no single job can be blamed for.
                for job in {job for job, _ in work}:
                    self._fail_job(job, exc)
            raise
        self._retire()
        self.steps_total += 1
        if self.config.on_step is not None:
            jobs = len({job for part, _ in done for job, _ in part})
            self.config.on_step(SeparationStep(segments, jobs, time.perf_counter() - started,
                                               isolated))
        return True

    def _admit(self) -> None:
        """Admit waiting jobs while the admitted ones have fewer segments left than one
        batch: accumulators exist only for the jobs about to run, however long the queue."""
        left = sum(len(job.segments) - job.next_segment for job in self.active)
        while left < self.batch_segments:
            taken = self.scheduler.take(1)
            if not taken:
                return
            job = taken[0]
            if job.canceled or job.future.done():
                continue
            job.acc = torch.zeros_like(job.x)
            self.active.append(job)
            left += len(job.segments)

    def _take(self, limit: int) -> list[Work]:
        """The next `limit` segments, oldest job first (it finishes first under load)."""
        work: list[Work] = []
        for job in self.active:
            while job.next_segment < len(job.segments) and len(work) < limit:
                work.append((job, job.segments[job.next_segment]))
                job.next_segment += 1
        return work

    def _forward(self, work: list[Work]) -> torch.Tensor:
        """Separate segments of any jobs: one stacked forward, or (`stack` off) one forward a
        segment on `cpu_workers` threads. Returns ``[B, C', window]`` float32 on the host,
        each segment's stems combined with its job's coefficients. No side effects, so a part
        can be re-run when the batch is narrowed down."""
        windows = torch.stack([read_window(job.x, segment, job.shift, job.scale)
                               for job, segment in work])
        coef = torch.stack([job.coef for job, _ in work])
        if self.stack:
            return self._separate(windows, coef)
        rows = [(windows[i:i + 1], coef[i:i + 1]) for i in range(len(work))]
        if self._pool is None:
            return torch.cat([self._separate(*row) for row in rows])
        futures = [self._pool.submit(self._separate, *row) for row in rows]
        wait(futures)  # all done before a re-run may use the model again
        return torch.cat([future.result() for future in futures])

    @torch.inference_mode()
    def _separate(self, windows: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """``[B, C', window]`` windows and ``[B, S]`` coefficients -> ``[B, C', window]``."""
        with self.precision():
            stems = self.model(windows.to(self.device, non_blocking=True))  # [B, S, C', window]
        return torch.einsum("bs,bscw->bcw", coef, stems.float()).cpu()

    def precision(self) -> tp.ContextManager:
        """The forward's precision: float32, or autocast to `config.dtype` on CUDA."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _overlap_add(self, done: list[tuple[list[Work], torch.Tensor]]) -> int:
        """Add each computed segment into its job's accumulator, as `apply_model` does:
        trimmed to the segment, weighted by the transition triangle. Returns how many."""
        count = 0
        for part, combined in done:
            for row, (job, segment) in enumerate(part):
                if job.future.done() or job.acc is None:
                    continue  # failed or canceled meanwhile
                weight = self.weight[:segment.length]
                span = slice(segment.offset, segment.offset + segment.length)
                piece = combined[row, :, segment.trim:segment.trim + segment.length]
                job.acc[:, span] += weight * piece
                job.done_segments += 1
                count += 1
                self.audio_seconds_total += segment.length / self.separator.sample_rate
        self.segments_total += count
        for job in {job for part, _ in done for job, _ in part}:
            if job.request.on_progress and not job.future.done():
                self._call_progress(job)
        return count

    def _retire(self) -> None:
        for job in [job for job in self.active if job.done_segments == len(job.segments)]:
            self.active.remove(job)
            if not job.future.done():
                job.future.set_result(None)

    def _isolated(self, work: list[Work], failed: list[tuple[Work, Exception]]) -> None:
        self.isolated_steps_total += 1
        for (job, _), error in failed:
            self._fail_job(job, error)
        log_event(log, "separation_step_isolated", logging.WARNING,
                  job_ids=sorted({job.job_id for job, _ in work}),
                  failed_job_ids=sorted({job.job_id for (job, _), _ in failed}),
                  errors=sorted({f"{type(error).__name__}: {error}" for _, error in failed}))

    @staticmethod
    def _call_progress(job: SeparationJob) -> None:
        try:
            job.request.on_progress(job.done_segments, len(job.segments))  # type: ignore[misc]
        except Exception:
            log.exception("progress callback failed", extra={"job_id": job.job_id})

    def _fail_job(self, job: SeparationJob, exc: BaseException) -> None:
        """Fail `job` wherever it is (active, waiting) and free its accumulator. A finished
        job is left alone (its caller may be reading the accumulator)."""
        if job.future.done():
            return
        if job in self.active:
            self.active.remove(job)
        self.scheduler.remove_waiting(lambda waiting: waiting is job)
        job.acc = None
        job.future.set_exception(exc)

    # --- EngineLifecycle -----------------------------------------------------------------
    _engine_name = "separation engine"

    def _job_id(self, job: SeparationJob) -> str:
        return job.job_id

    def _take_all_jobs(self) -> list[SeparationJob]:
        jobs = self.active + self.scheduler.remove_waiting(lambda job: True)
        self.active = []
        for job in jobs:
            job.acc = None
        return jobs
