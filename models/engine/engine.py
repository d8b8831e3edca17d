"""The decoding engine: many users' edits share one batched decoding pass.

Layers, as in vLLM: :class:`~models.engine.scheduler.Scheduler` decides which job windows hold
slots; :class:`~models.engine.runner.DecodeRunner` runs one step for the batch; the model
(:class:`~models.instruct_musicgen.InstructMusicGen`) only defines math. This module ties them:
per-job work done once (EnCodec encoding, text K/V, the condition path per window), the
per-row delay pattern, per-row seeded sampling with per-row parameters, windows of long inputs,
cancellation, progress, and a background loop with futures for callers in other threads.
"""
from __future__ import annotations

import logging
import threading
import time
import typing as tp
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from musicedit.logs import log_event

from .. import audio
from ..instruct_musicgen import TextKV
from ..loader import LoadedModel
from ..sampling import SamplingParams, guided_logits, make_generator, sample_tokens
from .kv_cache import ROWS_PER_SLOT, PrefillKVCache, SlotBuffers, SlotGeometry
from .runner import DecodeRunner
from .scheduler import Scheduler, slots_for_budget
from .windows import Window, plan_windows

log = logging.getLogger(__name__)
UNKNOWN = -1
# Window w of a job samples from seed + w * this, so windows never reuse a random stream.
WINDOW_SEED_STRIDE = 1_000_003


class JobCanceled(Exception):
    """The job was canceled before it finished."""


class InputTooLong(ValueError):
    """The input is longer than the engine's configured maximum."""


class NonFiniteLogits(RuntimeError):
    """The model produced NaN/inf for this job (its input or weights are broken)."""


@dataclass(frozen=True)
class StepInfo:
    """What one decode step did (for metrics)."""

    batch_size: int      # jobs decoded in this step
    bucket: int          # slots the runner computed (padded batch)
    seconds: float
    frames: int          # codebook-0 frames produced (one per job that did not fail)
    isolated: bool = False  # the batched forward raised and was re-run on parts of the batch


@dataclass(frozen=True)
class EngineStats:
    active_jobs: int
    waiting_jobs: int
    slots_in_use: int
    max_slots: int
    steps_total: int
    frames_total: int
    isolated_steps_total: int  # steps whose batched forward raised (see StepInfo.isolated)


@dataclass
class EngineConfig:
    """Engine settings.

    Attributes:
        max_batch_size: most jobs decoded together (each is 2 rows under CFG).
        kv_cache_budget_bytes: memory for per-slot caches; None = enough for max_batch_size
            on the CPU, 80% of free GPU memory on CUDA.
        max_input_seconds: longest accepted input (default 5 minutes).
        window_seconds: window length (the model's 5 s training clips).
        prompt_seconds: overlap carried from one window's output into the next.
        max_text_tokens: longest instruction in tokens.
        batch_buckets: padded batch sizes (slots) the CUDA graphs are captured for.
        use_cuda_graphs: capture/replay the decode step on CUDA.
        compile: ``torch.compile`` the decode step.
        progress_every_steps: how often ``on_progress`` callbacks run.
        condition_batch_size: most windows whose condition paths run in one forward when
            several are admitted at the same step boundary (one pass over the weights for
            all of them instead of one per window).
        silence_peak_threshold: inputs whose absolute peak is below this are refused as
            silent (the worker passes the gateway's ``MUSICEDIT_SILENCE_PEAK_THRESHOLD``).
        on_step: called after every decode step with a :class:`StepInfo`.
    """

    max_batch_size: int = 8
    kv_cache_budget_bytes: int | None = None
    max_input_seconds: float = 300.0
    window_seconds: float = 5.0
    prompt_seconds: float = 2.0
    max_text_tokens: int = 64
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    use_cuda_graphs: bool = True
    compile: bool = False
    progress_every_steps: int = 10
    condition_batch_size: int = 16
    silence_peak_threshold: float = audio.SILENCE_PEAK_THRESHOLD
    on_step: tp.Callable[[StepInfo], None] | None = None


@dataclass
class EditRequest:
    """One user's edit.

    Attributes:
        wav: ``[C, N]`` float32 samples at ``sample_rate``.
        instruction: the canonical template (``Music piece. Instruct: Add Drums.``).
    """

    job_id: str
    wav: np.ndarray | torch.Tensor
    sample_rate: int
    instruction: str
    params: SamplingParams = SamplingParams()
    on_progress: tp.Callable[[int, int], None] | None = None


@dataclass
class EditOutput:
    audio: torch.Tensor   # [1, N] float32 at sample_rate
    sample_rate: int
    frames: int
    codes: torch.Tensor   # [K, T]


@dataclass
class _Job:
    request: EditRequest
    codes: torch.Tensor             # [K, T] input codes
    num_samples: int
    text: TextKV                    # rows: conditional, null
    windows: list[Window]
    output: torch.Tensor            # [K, T] generated codes, UNKNOWN until written
    future: Future
    canceled: bool = False
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _WindowWork:
    job: _Job
    window: Window


@dataclass
class _SlotState:
    work: _WindowWork
    generator: torch.Generator
    last_step: int        # sequence index of the window's final step
    position: int         # next input position (host copy of ``positions[slot]``: no sync)


class EditHandle:
    """A submitted edit: wait for it, or cancel it."""

    def __init__(self, engine: "EditEngine", job: _Job):
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
        """Wait for the generated codes ``[K, T]`` (no audio decoding)."""
        return self._job.future.result(timeout)

    def result(self, timeout: float | None = None) -> EditOutput:
        """Wait for the codes, then decode them to audio (in the caller's thread).

        Raises:
            JobCanceled: the job was canceled.
            Exception: what failed this job (other jobs of its batch are not affected).
        """
        codes = self._job.future.result(timeout)
        return self._engine.decode(self._job, codes)


class EditEngine:
    """Batched Instruct-MusicGen decoding for many concurrent edits.

    ``submit`` may be called from any thread; the decode loop runs in one background thread
    (``start``) or is driven by hand with :meth:`step` (tests, benchmarks).
    """

    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()):
        self.model = model
        self.lm = model.lm
        self.config = config
        self.device = model.device
        self.window_frames = int(round(config.window_seconds * model.frame_rate))
        self.prompt_frames = int(round(config.prompt_seconds * model.frame_rate))
        if self.window_frames > self.lm.audio_fusion.max_condition_frames:
            raise ValueError(f"window of {self.window_frames} frames exceeds the adapter's "
                             f"{self.lm.audio_fusion.max_condition_frames}")
        plan_windows(self.window_frames, self.window_frames, self.prompt_frames)  # validates
        self.geometry = SlotGeometry.for_model(self.lm, self.window_frames, config.max_text_tokens)
        budget = config.kv_cache_budget_bytes
        if budget is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * 0.8)
        num_slots = slots_for_budget(self.geometry, model.dtype, config.max_batch_size, budget)
        self.buffers = SlotBuffers(self.geometry, num_slots, self.device, model.dtype)
        self.runner = DecodeRunner(self.lm, self.buffers, config.batch_buckets,
                                   config.use_cuda_graphs, config.compile)
        self.scheduler = Scheduler(num_slots)
        self.delays = torch.tensor(self.lm.lm.pattern_provider.delays, device=self.device)
        self.max_delay = int(self.delays.max())
        k = self.lm.num_codebooks
        self.sequences = torch.full((num_slots, k, self.geometry.max_sequence), UNKNOWN,
                                    dtype=torch.long, device=self.device)
        self.positions = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.temperature = torch.ones(num_slots, device=self.device)
        self.top_k = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.top_p = torch.zeros(num_slots, device=self.device)
        self.cfg_coef = torch.ones(num_slots, device=self.device)
        self.slot_states: list[_SlotState | None] = [None] * num_slots
        self._cancel_lock = threading.Lock()
        self._cancel_requests: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.steps_total = 0
        self.frames_total = 0
        self.isolated_steps_total = 0

    # ----------------------------------------------------------- submission
    def submit(self, request: EditRequest) -> EditHandle:
        """Encode the request's audio (EnCodec, in the caller's thread) and queue the job.

        Raises:
            InputTooLong, musicedit.errors.InvalidAudio, ValueError: the request cannot run.
        """
        request.params.validate(self.lm.card)
        x = audio.to_codec_input(request.wav, request.sample_rate, self.model.sample_rate,
                                 self.config.silence_peak_threshold)
        self._check_length(x.shape[-1] / self.model.sample_rate)
        codes = audio.encode(self.model.codec, x)[0].to(self.device)
        return self.submit_codes(request, codes, num_samples=x.shape[-1])

    def submit_codes(self, request: EditRequest, codes: torch.Tensor,
                     num_samples: int | None = None) -> EditHandle:
        """Queue a job whose input is already EnCodec codes ``[K, T]``.

        The text K/V are computed here, once per job; the condition path once per window when
        the window takes a slot.
        """
        request.params.validate(self.lm.card)
        self._check_length(codes.shape[-1] / self.model.frame_rate)
        with torch.no_grad():
            text = self.lm.encode_text(self.lm.text_embeddings([request.instruction, None]))
        if text.k[0].shape[2] > self.geometry.max_text_tokens:
            raise ValueError(f"the instruction is {text.k[0].shape[2]} tokens; at most "
                             f"{self.geometry.max_text_tokens} are accepted")
        windows = plan_windows(codes.shape[-1], self.window_frames, self.prompt_frames)
        if num_samples is None:
            num_samples = int(round(codes.shape[-1] * self.model.sample_rate / self.model.frame_rate))
        job = _Job(request, codes, num_samples, text, windows,
                   torch.full_like(codes, UNKNOWN), Future())
        job.future.set_running_or_notify_cancel()
        self.scheduler.submit(_WindowWork(job, windows[0]))
        return EditHandle(self, job)

    def _check_length(self, seconds: float) -> None:
        if seconds > self.config.max_input_seconds:
            raise InputTooLong(f"the input is {seconds:.1f} s; the engine accepts at most "
                               f"{self.config.max_input_seconds:g} s")

    def cancel(self, job: _Job) -> None:
        with self._cancel_lock:
            self._cancel_requests.append(job)
        self.scheduler.wakeup.set()

    def decode(self, job: _Job, codes: torch.Tensor) -> EditOutput:
        """Codes of a whole job -> audio, decoded in one pass (continuous across windows)."""
        wav = audio.decode(self.model.codec, codes.unsqueeze(0), num_samples=job.num_samples)
        return EditOutput(wav[0], self.model.sample_rate, codes.shape[-1], codes)

    def stats(self) -> EngineStats:
        active = self.scheduler.active()
        jobs = {id(self.slot_states[i].work.job) for i in active if self.slot_states[i]}
        return EngineStats(len(jobs), self.scheduler.waiting(), len(active),
                           self.scheduler.num_slots, self.steps_total, self.frames_total,
                           self.isolated_steps_total)

    # ----------------------------------------------------------- background loop
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edit-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.scheduler.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception:  # keep serving other jobs; step() already failed the jobs
                log.exception("decode step failed")
                worked = True
            if not worked:
                self.scheduler.wakeup.wait(0.05)
                self.scheduler.wakeup.clear()

    # ----------------------------------------------------------- one step
    def step(self) -> bool:
        """Apply cancellations, admit waiting windows, decode one step. False if idle."""
        self._apply_cancellations()
        admissions = self.scheduler.admit()
        if admissions:
            self._start_windows(admissions)
        active = [i for i in self.scheduler.active() if self.slot_states[i] is not None]
        if not active:
            return False
        started = time.perf_counter()
        isolated_before = self.isolated_steps_total
        try:
            finished = self._decode_step(active)
        except Exception as exc:
            # Not the forward (its failures are isolated in _decode_step): sampling or
            # bookkeeping, which no single job can be blamed for.
            for slot in active:
                self._fail(slot, exc)
            raise
        decoded = sum(self.slot_states[slot] is not None for slot in active)
        for slot in finished:
            self._finish_window(slot)
        seconds = time.perf_counter() - started
        self.steps_total += 1
        self.frames_total += decoded
        if self.config.on_step is not None:
            self.config.on_step(StepInfo(len(active), self.runner.bucket_for(max(active) + 1),
                                         seconds, decoded,
                                         self.isolated_steps_total != isolated_before))
        return True

    @torch.no_grad()
    def _decode_step(self, active: list[int]) -> list[int]:
        """One decode step for the active slots; returns the slots whose window finished.
        Slots that fail (the forward raised for them alone, or non-finite logits) are freed
        and their jobs failed here."""
        idx = torch.tensor(active, device=self.device)
        try:
            cond, uncond = self._forward(active, idx)
        except Exception as exc:
            active, cond, uncond = self._isolate_forward_failure(active, exc)
            if not active:
                return []
            idx = torch.tensor(active, device=self.device)
        guided = guided_logits(cond, uncond, self.cfg_coef[idx])
        bad = (~torch.isfinite(guided)).flatten(1).any(1)
        generators = [self.slot_states[i].generator for i in active]
        sampled = sample_tokens(guided, self.temperature[idx], self.top_k[idx], self.top_p[idx],
                                generators)
        # Write step pos+1 of each active row: the delay pattern decides which codebooks are
        # real there; prompt tokens already in place are kept.
        nxt = self.positions[idx] + 1
        frame = nxt.view(-1, 1) - 1 - self.delays.view(1, -1)
        frames = torch.tensor([self.slot_states[i].work.window.frames for i in active],
                              device=self.device)
        valid = (frame >= 0) & (frame < frames.view(-1, 1))
        new = torch.where(valid, sampled, torch.full_like(sampled, self.lm.special_token_id))
        current = self.sequences[idx, :, nxt]
        self.sequences[idx, :, nxt] = torch.where(current == UNKNOWN, new, current)
        self.positions[idx] += 1
        finished = []
        bad_rows = bad.tolist()
        for row, slot in enumerate(active):
            state = self.slot_states[slot]
            job = state.work.job
            if bad_rows[row]:
                self._fail(slot, NonFiniteLogits(
                    f"the model produced non-finite logits for job {job.request.job_id}"))
                continue
            job.steps += 1
            state.position += 1
            if state.position >= state.last_step:
                finished.append(slot)
            elif job.request.on_progress and job.steps % self.config.progress_every_steps == 0:
                self._report_progress(slot)
        return finished

    def _forward(self, active: list[int], idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched forward over the first ``max(active) + 1`` slots (free slots below the
        highest are padding); ``idx`` is ``active`` as a tensor. Returns ``(cond, uncond)``
        float32 logits ``[len(active), K, card]``. Its only side effect is writing each row's
        K/V at the row's current position, so a step that raised can be run again from the
        same state."""
        tokens, pos = self._current_tokens(slice(0, max(active) + 1))
        tokens = tokens.clamp(min=0)  # free slots below the highest hold UNKNOWN; never read
        max_position, condition_length, text_length = self._attention_lengths(active)
        logits = self.runner.step(tokens.repeat_interleave(ROWS_PER_SLOT, dim=0),
                                  pos.repeat_interleave(ROWS_PER_SLOT), max_position,
                                  condition_length, text_length)
        # Guidance and sampling in float32 (fp16 logits would lose the small differences).
        return (logits[0::ROWS_PER_SLOT][idx].float(), logits[1::ROWS_PER_SLOT][idx].float())

    def _forward_slots(self, slots: list[int], lengths: tuple[int, int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_forward` for these slots only (eager; the failure-isolation path).
        ``lengths`` are the whole batch's :meth:`_attention_lengths`: each row then attends
        over exactly what it attended over in the batched step."""
        index = torch.tensor(slots, device=self.device)
        tokens, pos = self._current_tokens(index)
        logits = self.runner.step_slots(index, tokens.repeat_interleave(ROWS_PER_SLOT, dim=0),
                                        pos.repeat_interleave(ROWS_PER_SLOT), *lengths)
        return logits[0::ROWS_PER_SLOT].float(), logits[1::ROWS_PER_SLOT].float()

    def _current_tokens(self, slots: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input tokens ``[S, K, 1]`` long of ``slots`` (a slice or a ``[S]`` index) at each
        slot's current position, and those positions ``[S]`` long."""
        pos = self.positions[slots]
        k = self.lm.num_codebooks
        return self.sequences[slots].gather(2, pos.view(-1, 1, 1).expand(-1, k, 1)), pos

    def _attention_lengths(self, slots: list[int]) -> tuple[int, int, int]:
        """Furthest position, longest condition (frames + 1) and longest instruction (tokens)
        among ``slots``, from host copies (no device sync)."""
        states = [self.slot_states[i] for i in slots]
        return (max(s.position for s in states),
                max(s.work.window.frames for s in states) + 1,
                max(s.work.job.text.k[0].shape[2] for s in states))

    def _isolate_forward_failure(self, active: list[int], exc: Exception
                                 ) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """The batched forward raised ``exc``: find the job(s) it raised for instead of failing
        the whole batch. The step is re-run from the same state on halves of the batch,
        recursively, down to single slots; a slot whose forward still raises alone fails with
        its own exception, every other slot keeps the logits of the part it ran in. Nothing
        was sampled yet (no random stream moved), and a re-run rewrites the same K/V
        positions and attends over the same lengths as the batch: the survivors sample with
        the logits the batched step would have given them (up to the float rounding any
        change of batch size can bring). A fault that hits every part (a broken device) fails
        every job; one that only a large batch hits (memory) fails none.

        Returns:
            the surviving slots (in ``active``'s order) and their ``(cond, uncond)`` logits, or
            ``([], None, None)`` when every slot failed.
        """
        self.isolated_steps_total += 1
        survivors: list[int] = []
        conds: list[torch.Tensor] = []
        unconds: list[torch.Tensor] = []
        failed: dict[int, str] = {}
        lengths = self._attention_lengths(active)
        job_ids = {slot: self.slot_states[slot].work.job.request.job_id for slot in active}

        def run(part: list[int], known_to_fail: bool = False) -> None:
            if not known_to_fail:
                try:
                    cond, uncond = self._forward_slots(part, lengths)
                except Exception as error:
                    if len(part) == 1:
                        failed[part[0]] = job_ids[part[0]]
                        self._fail(part[0], error)
                        return
                else:
                    survivors.extend(part)
                    conds.append(cond)
                    unconds.append(uncond)
                    return
            half = len(part) // 2
            run(part[:half])
            run(part[half:])

        # A lone slot is re-run once: without the padding rows of free slots below it, it
        # may pass.
        run(active, known_to_fail=len(active) > 1)
        log_event(log, "decode_step_isolated", logging.WARNING, exc_info=exc,
                  job_ids=list(job_ids.values()), failed_job_ids=list(failed.values()),
                  error=f"{type(exc).__name__}: {exc}")
        if not survivors:
            return [], None, None
        return survivors, torch.cat(conds), torch.cat(unconds)

    # ----------------------------------------------------------- slot lifecycle
    @torch.no_grad()
    def _start_windows(self, admissions: list) -> None:
        """Start the windows admitted at this step boundary. Their condition paths run
        together, ``condition_batch_size`` windows per forward (right-padded to the longest,
        masked), so admitting a batch of jobs reads the weights once, not once per job."""
        ready = []
        for admission in admissions:
            work = admission.item
            if work.job.canceled:
                self._fail_unstarted(admission.slot, work, JobCanceled(work.job.request.job_id))
            else:
                ready.append(admission)
        size = max(1, self.config.condition_batch_size)
        for first in range(0, len(ready), size):
            chunk = ready[first:first + size]
            try:
                condition = self._encode_conditions([a.item for a in chunk])
            except Exception:
                if len(chunk) == 1:
                    condition = None  # _start_window reports the error for this job alone
                else:
                    # One window's input made the batched pass fail: run them one by one so
                    # only that job fails.
                    log.exception("batched condition path failed; retrying window by window")
                    for admission in chunk:
                        self._start_window(admission.slot, admission.item)
                    continue
            for row, admission in enumerate(chunk):
                self._start_window(admission.slot, admission.item, condition, row)
        self._prefill_prompts([a.slot for a in admissions])

    def _encode_conditions(self, works: list[_WindowWork]):
        frames = [w.window.frames for w in works]
        longest = max(frames)
        codes = torch.stack([
            torch.nn.functional.pad(w.job.codes[:, w.window.start:w.window.end],
                                    (0, longest - w.window.frames))
            for w in works])
        return self.lm.encode_condition(codes, torch.tensor(frames, device=self.device))

    def _fail_unstarted(self, slot: int, work: _WindowWork, exc: BaseException) -> None:
        self.slot_states[slot] = _SlotState(work, None, 0, 0)  # type: ignore[arg-type]
        self._fail(slot, exc)

    @torch.no_grad()
    def _start_window(self, slot: int, work: _WindowWork, condition=None, row: int = 0) -> None:
        job, window = work.job, work.window
        try:
            if job.canceled:
                raise JobCanceled(job.request.job_id)
            if condition is None:
                condition = self._encode_conditions([work])
                row = 0
            self.buffers.load_condition(slot, condition, row)
            self.buffers.load_text(slot, job.text)
            self.sequences[slot] = self._initial_sequence(job, window)
            params = job.request.params
            self.temperature[slot] = params.temperature
            self.top_k[slot] = params.top_k
            self.top_p[slot] = params.top_p
            self.cfg_coef[slot] = params.cfg_coef
            generator = make_generator(params.seed + WINDOW_SEED_STRIDE * window.index, self.device)
            # The first decode input is the step before the first unknown token; everything
            # before it (the prompt) is prefilled in one chunk (`_prefill_prompts`).
            first = window.prompt + int(self.delays.min())
            self.positions[slot] = first
            self.slot_states[slot] = _SlotState(work, generator, window.frames + self.max_delay,
                                                first)
        except Exception as exc:
            self._fail_unstarted(slot, work, exc)

    def _initial_sequence(self, job: _Job, window: Window) -> torch.Tensor:
        """``[K, max_sequence]``: special where the pattern is empty, the prompt where given,
        UNKNOWN where the model must generate."""
        steps = torch.arange(self.geometry.max_sequence, device=self.device)
        frame = steps.view(1, -1) - 1 - self.delays.view(-1, 1)
        valid = (frame >= 0) & (frame < window.frames)
        seq = torch.where(valid, UNKNOWN, self.lm.special_token_id)
        if window.prompt:
            given = valid & (frame < window.prompt)
            source = job.output[:, window.start:window.start + window.prompt]
            prompt = source.gather(1, frame.clamp(0, window.prompt - 1))
            seq = torch.where(given, prompt, seq)
        return seq

    @torch.no_grad()
    def _prefill_prompts(self, slots: list[int]) -> None:
        """Prefill the prompts of newly started windows: one forward for all windows whose
        prompts have the same length (windows continuing a previous one all have
        ``prompt_seconds`` of prompt), up to ``condition_batch_size`` windows per forward.
        If a batched prefill raises, its windows are retried one by one so only the
        offending job fails."""
        by_length: dict[int, list[int]] = {}
        for slot in slots:
            state = self.slot_states[slot]
            if state is not None and state.generator is not None and state.position > 0:
                by_length.setdefault(state.position, []).append(slot)
        size = max(1, self.config.condition_batch_size)
        for length, group in by_length.items():
            for first in range(0, len(group), size):
                chunk = group[first:first + size]
                try:
                    self._prefill(chunk, length)
                except Exception as exc:
                    if len(chunk) == 1:
                        self._fail(chunk[0], exc)
                        continue
                    log.exception("batched prefill failed; retrying window by window")
                    for slot in chunk:
                        try:
                            self._prefill([slot], length)
                        except Exception as single:
                            self._fail(slot, single)

    def _prefill(self, slots: list[int], length: int) -> None:
        index = torch.tensor(slots, device=self.device)
        rows = (index.view(-1, 1) * ROWS_PER_SLOT
                + torch.arange(ROWS_PER_SLOT, device=self.device)).flatten()
        tokens = self.sequences[index, :, :length].repeat_interleave(ROWS_PER_SLOT, dim=0)
        positions = torch.arange(length, device=self.device).expand(rows.shape[0], -1)
        self.lm(tokens, positions, self.buffers.text_of_rows(rows),
                self.buffers.condition_of_slots(index), PrefillKVCache(self.buffers, rows))

    def _finish_window(self, slot: int) -> None:
        state = self.slot_states[slot]
        job, window = state.work.job, state.work.window
        t = torch.arange(window.frames, device=self.device)
        index = (t.view(1, -1) + 1 + self.delays.view(-1, 1))
        codes = self.sequences[slot].gather(1, index)  # revert the delay pattern
        job.output[:, window.start:window.end] = codes
        self._free(slot)
        if window.index + 1 < len(job.windows):
            self.scheduler.submit(_WindowWork(job, job.windows[window.index + 1]), front=True)
            return
        if job.request.on_progress:
            total = job.codes.shape[-1]
            job.request.on_progress(total, total)
        job.future.set_result(job.output)

    def _report_progress(self, slot: int) -> None:
        state = self.slot_states[slot]
        window = state.work.window
        done = window.start + min(state.position, window.frames)
        job = state.work.job
        try:
            job.request.on_progress(done, job.codes.shape[-1])
        except Exception:
            log.exception("progress callback failed", extra={"job_id": job.request.job_id})

    def _free(self, slot: int) -> None:
        self.slot_states[slot] = None
        self.sequences[slot].fill_(UNKNOWN)
        self.positions[slot] = 0
        self.buffers.reset(slot)
        self.scheduler.release(slot)

    def _fail(self, slot: int, exc: BaseException) -> None:
        state = self.slot_states[slot]
        if state is None:
            return
        job = state.work.job
        self._free(slot)
        if not job.future.done():
            job.future.set_exception(exc)

    def _apply_cancellations(self) -> None:
        with self._cancel_lock:
            requests, self._cancel_requests = self._cancel_requests, []
        for job in requests:
            job.canceled = True
            self.scheduler.remove_waiting(lambda work, job=job: work.job is job)
            for slot, state in enumerate(self.slot_states):
                if state is not None and state.work.job is job:
                    self._free(slot)
            if not job.future.done():
                job.future.set_exception(JobCanceled(f"job {job.request.job_id} was canceled"))
