"""The decoding engine: many users' edits share one batched decoding pass.

Layers, as in vLLM: the `models.engine.scheduler.Scheduler` decides which job windows
take free slots; `models.engine.batch_state.BatchState` holds the slots' per-window
state (dense, on the device); `models.engine.runner.DecodeRunner` runs one step for the
batch; the model (`models.instruct_musicgen.InstructMusicGen`) only defines math. This
module ties them: per-job work done once (EnCodec encoding, text keys/values, the condition
path per window), the delay pattern, per-row sampling with per-row parameters and
counter-based noise, windows of long inputs, cancellation, progress, failure isolation, and a
background loop with futures for callers in other threads.

On CUDA the engine decodes on its own stream and a steady-state step reads nothing back from
the device: the host mirrors what control flow needs, and the per-slot non-finite flags reach
the host a step late through a pinned, non-blocking copy. Callers' threads run EnCodec and T5
on streams of their own, a bounded number of codec chunks at a time.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import typing as tp
from concurrent.futures import Future
from contextlib import nullcontext
from functools import partial

import torch

from musicedit.instructions import TEMPLATES
from musicedit.logs import log_event

from .. import audio, codec
from ..attention import ConditionKV
from ..loader import LoadedModel
from ..sampling import guided_logits, sample_tokens, step_keys, token_hashes, window_key
from .batch_state import UNKNOWN, BatchState, SlotInfo
from .errors import (
    InputTooLong,
    JobCanceled,
    NonFiniteLogits,
    is_fatal_device_error,
)
from .handles import EditHandle, EngineJob, WindowWork
from .isolation import run_narrowing
from .kv_cache import ROWS_PER_SLOT, PrefillKVCache, SlotBuffers, SlotGeometry
from .lifecycle import EngineLifecycle
from .memory import gpu_cache_budget
from .nonfinite import NonFiniteFlags
from .runner import DecodeRunner, StepShape
from .scheduler import Scheduler, slots_for_budget
from .streams import CallerStream
from .types import (
    MAX_STEPS,
    EditOutput,
    EditRequest,
    EngineConfig,
    EngineStats,
    StepInfo,
)
from .windows import Window, plan_windows

log = logging.getLogger(__name__)


class EditEngine(EngineLifecycle[EngineJob]):
    """Batched Instruct-MusicGen decoding for many concurrent edits.

    `submit` may be called from any thread; the decode loop runs in one background thread
    (`start`) or is driven by hand with `step` (tests, benchmarks). Everything that
    could allocate or capture lazily (CUDA graphs, compiled code, the memory plan) is done
    here, in the constructor, before the engine takes a job.
    """

    def __init__(self, model: LoadedModel, config: EngineConfig | None = None):
        config = config or EngineConfig()
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
        self.chunking = codec.Chunking.from_seconds(model.frame_rate, config.codec_chunk_seconds,
                                                    config.codec_context_seconds)
        self._codec_slots = threading.BoundedSemaphore(max(1, config.codec_concurrency))
        self._streams = threading.local()
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        delays = self.lm.delays
        self.max_delay, self.min_delay = max(delays), min(delays)
        self.weights = self.lm.decode_weights()
        max_text = config.max_text_tokens or self._template_tokens()
        self.geometry = SlotGeometry.for_model(self.lm, self.window_frames, max_text)
        self.memory_plan: dict[str, int] = {}
        budget = config.kv_cache_budget_bytes
        if budget is None and self.device.type == "cuda":
            budget, self.memory_plan = gpu_cache_budget(self)
        num_slots = slots_for_budget(self.geometry, model.dtype, config.max_batch_size, budget)
        self.buffers = SlotBuffers(self.geometry, num_slots, self.device, model.dtype)
        self.batch = BatchState(num_slots, self.lm.num_codebooks, self.geometry.max_sequence,
                                delays, self.lm.special_token_id, self.device)
        self.runner = DecodeRunner(self.lm, self.weights, self.buffers, config.batch_buckets,
                                   config.length_multiple, config.use_cuda_graphs,
                                   config.compile, config.graph_backend)
        self.scheduler: Scheduler[WindowWork] = Scheduler()
        self.token_hashes = token_hashes(self.lm.num_codebooks, self.lm.card, self.device)
        self._flags = NonFiniteFlags(self.device)
        self._init_lifecycle(config.on_fatal, self.scheduler.wakeup)
        self.steps_total = 0
        self.frames_total = 0
        self.isolated_steps_total = 0
        with self._device_context():
            self.runner.prepare()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------ construction
    def _template_tokens(self) -> int:
        """Longest instruction template of the model's stems in tokens, rounded up to 8."""
        texts = [template.format(stem=stem) for template in TEMPLATES.values()
                 for stem in self.model.stems]
        with torch.no_grad():
            longest = max(e.shape[0] for e in self.lm.text_embeddings(texts))
        return 8 * math.ceil(longest / 8)

    # ----------------------------------------------------------- submission
    def submit(self, request: EditRequest) -> EditHandle:
        """Encode the request's audio (EnCodec, in the caller's thread) and queue the job.

        Raises:
            InputTooLong, musicedit.errors.InvalidAudio, ValueError: the request cannot run.
            DeviceFailed: the engine's device failed.
        """
        self._raise_if_failed()
        request.params.validate(self.lm.card)
        if request.wav is None:
            raise ValueError("submit takes audio (EditRequest.wav); give codes to submit_codes")
        x = audio.to_codec_input(request.wav, request.sample_rate, self.model.sample_rate,
                                 self.config.silence_peak_threshold)
        self._check_length(x.shape[-1] / self.model.sample_rate)
        with self._caller_stream():
            codes = codec.encode(self.model.codec, x, self.chunking, guard=self._codec_guard)[0]
        return self.submit_codes(request, codes, num_samples=x.shape[-1])

    def submit_codes(self, request: EditRequest, codes: torch.Tensor,
                     num_samples: int | None = None) -> EditHandle:
        """Queue a job whose input is already EnCodec codes `[K, T]` (any device).

        The text keys/values of every step are computed here, once per job; the condition
        path once per window when the window takes a slot.

        Raises:
            InputTooLong, ValueError: the request cannot run (length, parameters, steps,
                range, instruction length).
        """
        self._raise_if_failed()
        request.params.validate(self.lm.card)
        steps = request.steps
        if not 1 <= len(steps) <= MAX_STEPS:
            raise ValueError(f"an edit has 1 to {MAX_STEPS} steps, got {len(steps)}")
        total = codes.shape[-1]
        self._check_length(total / self.model.frame_rate)
        start, end = self.frames_of(request.time_range, total)
        with self._caller_stream(), torch.no_grad():
            codes = codes.to(self.device, non_blocking=True).long()
            texts = [self.lm.encode_text(self.lm.text_embeddings([text, None])) for text in steps]
            output = codes.clone()
        longest = max(text.k[0].shape[2] for text in texts)
        if longest > self.geometry.max_text_tokens:
            raise ValueError(f"the instruction is {longest} tokens; at most "
                             f"{self.geometry.max_text_tokens} are accepted")
        windows = plan_windows(end, self.window_frames, self.prompt_frames, start=start)
        if num_samples is None:
            num_samples = int(round(total * self.model.sample_rate / self.model.frame_rate))
        job = EngineJob(request, codes, num_samples, texts, (start, end), windows, output,
                        Future())
        job.future.set_running_or_notify_cancel()
        self.scheduler.submit(WindowWork(job, windows[0]))
        return EditHandle(self, job)

    def frames_of(self, time_range: tuple[float, float] | None, total: int) -> tuple[int, int]:
        """The codec frames `[start, end)` that cover `time_range` (seconds) in a clip of
        `total` frames (all of them for None).

        Raises:
            ValueError: the range is empty or not inside the clip.
        """
        if time_range is None:
            return 0, total
        rate = self.model.frame_rate
        start = math.floor(time_range[0] * rate + 1e-6)
        end = min(total, math.ceil(time_range[1] * rate - 1e-6))
        if not 0 <= start < end:
            raise ValueError(f"time range {time_range[0]:g}-{time_range[1]:g} s is not inside "
                             f"the clip's {total / rate:g} s")
        return start, end

    def _check_length(self, seconds: float) -> None:
        if seconds > self.config.max_input_seconds:
            raise InputTooLong(f"the input is {seconds:.1f} s; the engine accepts at most "
                               f"{self.config.max_input_seconds:g} s")

    def decode(self, job: EngineJob, codes: torch.Tensor) -> EditOutput:
        """A job's codes -> the audio of its edited frames, on the host (continuous across
        windows; EnCodec in chunks with context beyond the range, in the caller's thread)."""
        start, end = job.frame_range
        hop = codec.hop_length(self.model.codec)
        with self._caller_stream():
            wav = codec.decode_range(self.model.codec, codes.unsqueeze(0), start, end,
                                     chunking=self.chunking, guard=self._codec_guard)
        wav = wav[..., :max(0, job.num_samples - start * hop)]  # the clip's last partial frame
        return EditOutput(wav[0], self.model.sample_rate, codes.shape[-1], codes, (start, end))

    def stats(self) -> EngineStats:
        jobs = {id(info.work.job) for info in list(self.batch.infos)}
        return EngineStats(len(jobs), self.scheduler.waiting(), self.batch.size,
                           self.batch.num_slots, self.steps_total, self.frames_total,
                           self.isolated_steps_total, self.runner.capture_failures,
                           self._failure is not None)

    # ------------------------------------------------------- streams and codec
    def _device_context(self) -> tp.ContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def _caller_stream(self) -> tp.ContextManager:
        """The calling thread's own CUDA stream for codec and text work; leaving the block
        waits for that work (this thread only: the engine's stream is not blocked)."""
        if self.device.type != "cuda":
            return nullcontext()
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.device)
        return CallerStream(self, stream)

    def _codec_guard(self) -> tp.ContextManager:
        return self._codec_slots

    # ----------------------------------------------------------- one step
    def _step(self) -> bool:
        for job in self._flags.ready():
            self._fail_job(job, self._nonfinite(job), clear=True)
        self._apply_cancellations()
        admitted = self.scheduler.take(self.batch.num_slots - self.batch.size)
        if admitted:
            self._start_windows(admitted)
        n = self.batch.size
        if n == 0:
            return False
        started = time.perf_counter()
        try:
            decoded, shape, isolated = self._decode_step(n)
        except Exception as exc:
            if not is_fatal_device_error(exc):
                # Not the forward (its failures are narrowed down): sampling or bookkeeping,
                # which no single job can be blamed for.
                for slot in reversed(range(self.batch.size)):
                    self._fail(slot, exc)
            raise
        finished = [slot for slot, info in enumerate(self.batch.infos)
                    if info.position >= info.last_step]
        every = self.config.progress_every_steps
        for info in self.batch.infos:
            if info.position < info.last_step and info.work.job.steps % every == 0:
                self._report_progress(info)
        self._finish_windows(finished)
        seconds = time.perf_counter() - started
        self.steps_total += 1
        self.frames_total += decoded
        if self.config.on_step is not None:
            self.config.on_step(StepInfo(n, shape[0], seconds, decoded, isolated))
        return True

    def _decode_step(self, n: int) -> tuple[int, StepShape, bool]:
        """Decode one step for slots `0..n-1`: forward, guidance, sampling, write. Returns
        how many slots decoded, the shape that ran and whether the forward was isolated."""
        infos = self.batch.infos[:n]
        self_length = max(info.position for info in infos) + 1
        cond_length = max(info.frames for info in infos) + 1
        slots = list(range(n))
        rows = self.batch.slot_index[:n]
        try:
            logits, shape = self.runner.step(self.batch.current_tokens(rows),
                                             self.batch.positions[:n], self_length, cond_length)
            cond, uncond = logits[0::ROWS_PER_SLOT].float(), logits[1::ROWS_PER_SLOT].float()
            isolated = False
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise
            shape = self.runner.shape_for(n, self_length, cond_length)
            slots, cond, uncond = self._isolate_forward_failure(slots, shape, exc)
            isolated = True
            if not slots:
                return 0, shape, True
            rows = torch.tensor(slots, device=self.device)
        guided = guided_logits(cond, uncond, self.batch.cfg_coef[rows])
        bad = ~torch.isfinite(guided).flatten(1).all(1)
        self.batch.nonfinite[rows] = self.batch.nonfinite[rows] | bad
        keys = step_keys(self.batch.keys[rows], self.batch.positions[rows] + 1)
        sampled = sample_tokens(guided, self.batch.temperature[rows], self.batch.top_k[rows],
                                self.batch.top_p[rows], keys, self.token_hashes,
                                candidates=max(self.batch.infos[s].candidates for s in slots))
        self.batch.write_sampled(rows, sampled)
        owners = [self.batch.infos[slot].work.job for slot in slots]
        self._flags.record(bad, owners)
        for slot in slots:
            info = self.batch.infos[slot]
            info.position += 1
            info.work.job.steps += 1
        return len(slots), shape, isolated

    def _isolate_forward_failure(self, slots: list[int], shape: StepShape, exc: Exception
                                 ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The batched forward raised `exc`: find the job(s) it raised for instead of failing
        the whole batch (`models.engine.isolation.run_narrowing`). Nothing was
        sampled yet, and a re-run writes the same cache positions and attends over the same
        lengths as the batch: the survivors sample with the logits the batched step would
        have given them (up to the rounding any change of batch size can bring).

        Returns:
            the surviving slots and their `(cond, uncond)` float32 logits.
        """
        self.isolated_steps_total += 1
        failed: list[tuple[int, Exception]] = []
        job_ids = [self.batch.infos[slot].work.job.request.job_id for slot in slots]

        def forward(part: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.tensor(part, device=self.device)
            logits = self.runner.step_slots(index, self.batch.current_tokens(index),
                                            self.batch.positions[index], shape)
            return logits[0::ROWS_PER_SLOT].float(), logits[1::ROWS_PER_SLOT].float()

        done = run_narrowing(slots, forward, lambda slot, error: failed.append((slot, error)),
                             first_error=exc)
        failed_ids = [self.batch.infos[slot].work.job.request.job_id for slot, _ in failed]
        log_event(log, "decode_step_isolated", logging.WARNING, exc_info=exc, job_ids=job_ids,
                  failed_job_ids=failed_ids, error=f"{type(exc).__name__}: {exc}")
        survivors = [slot for part, _ in done for slot in part]
        conds = [cond for _, (cond, _) in done]
        unconds = [uncond for _, (_, uncond) in done]
        # Fail after the survivors are known: failing frees a slot, which moves another.
        survivor_jobs = [self.batch.infos[slot].work for slot in survivors]
        for slot, error in sorted(failed, reverse=True):
            self._fail(slot, error)
        survivors = [self._slot_of(work) for work in survivor_jobs]
        if not survivors:
            return [], torch.empty(0), torch.empty(0)
        return survivors, torch.cat(conds), torch.cat(unconds)

    # ----------------------------------------------------------- slot lifecycle
    @torch.no_grad()
    def _start_windows(self, works: list[WindowWork]) -> None:
        """Start the windows admitted at this step boundary. Their condition paths run
        together, `condition_batch_size` windows per forward (right-padded to the longest,
        masked), so admitting a batch of jobs reads the weights once, not once per job."""
        ready = []
        for work in works:
            if work.job.canceled:
                self._settle(work.job, JobCanceled(f"job {work.job.request.job_id} was canceled"))
            elif not work.job.future.done():
                ready.append(work)
        started: list[int] = []
        size = max(1, self.config.condition_batch_size)
        for first in range(0, len(ready), size):
            done = run_narrowing(ready[first:first + size], self._encode_conditions,
                                 lambda work, error: self._settle(work.job, error))
            for part, condition in done:
                for row, work in enumerate(part):
                    try:
                        started.append(self._admit(work, condition, row))
                    except Exception as exc:
                        if is_fatal_device_error(exc):
                            raise
                        self._settle(work.job, exc)
        self._prefill_prompts([self.batch.infos[slot].work for slot in started])

    def _encode_conditions(self, works: list[WindowWork]) -> ConditionKV:
        frames = [w.window.frames for w in works]
        longest = max(frames)
        codes = torch.stack([
            torch.nn.functional.pad(w.job.codes[:, w.window.start:w.window.end],
                                    (0, longest - w.window.frames))
            for w in works])
        return self.lm.encode_condition(codes, torch.tensor(frames, device=self.device))

    def _admit(self, work: WindowWork, condition: ConditionKV, row: int) -> int:
        """Load a window into the next free slot; returns the slot."""
        job, window = work.job, work.window
        slot = self.batch.size
        if self.stream is not None and window.index == 0:
            job.codes.record_stream(self.stream)  # read on this stream, allocated on another
        try:
            self.buffers.load_condition(slot, condition, row)
            self.buffers.load_text(slot, job.texts[job.step])
        except Exception:
            self.buffers.reset(slot)
            raise
        params = job.request.params.for_step(job.step)
        # The first decode input is the step before the first unknown token; everything
        # before it (the prompt) is prefilled in one chunk (`_prefill_prompts`).
        first = window.prompt + self.min_delay
        info = SlotInfo(work, last_step=window.frames + self.max_delay, position=first,
                        frames=window.frames, candidates=params.candidates(self.lm.card))
        return self.batch.add(info, self._initial_sequence(job, window),
                              window_key(params.seed, window.index), params)

    def _initial_sequence(self, job: EngineJob, window: Window) -> torch.Tensor:
        """`[K, max_sequence]`: special where the pattern is empty, the prompt where given,
        UNKNOWN where the model must generate."""
        steps = self.buffers.sequence_steps[:self.geometry.max_sequence]
        frame = steps.view(1, -1) - 1 - self.batch.delays.view(-1, 1)
        valid = (frame >= 0) & (frame < window.frames)
        seq = torch.where(valid, UNKNOWN, self.lm.special_token_id)
        if window.prompt:
            given = valid & (frame < window.prompt)
            source = job.output[:, window.start:window.start + window.prompt]
            prompt = source.gather(1, frame.clamp(0, window.prompt - 1))
            seq = torch.where(given, prompt, seq)
        return seq

    @torch.no_grad()
    def _prefill_prompts(self, works: list[WindowWork]) -> None:
        """Prefill the prompts of newly started windows: one forward for all windows whose
        prompts have the same length (windows continuing a previous one all have
        `prompt_seconds` of prompt), up to `condition_batch_size` windows per forward; a
        forward that raises is narrowed down to the window(s) it raised for."""
        by_length: dict[int, list[WindowWork]] = {}
        for work in works:
            slot = self._slot_of(work)
            position = self.batch.infos[slot].position
            if position > 0:
                by_length.setdefault(position, []).append(work)
        failed: list[tuple[WindowWork, Exception]] = []
        size = max(1, self.config.condition_batch_size)
        for length, group in by_length.items():
            for first in range(0, len(group), size):
                run_narrowing(group[first:first + size], partial(self._prefill, length=length),
                              lambda work, error: failed.append((work, error)))
        for work, error in failed:
            self._fail(self._slot_of(work), error)

    def _prefill(self, works: list[WindowWork], length: int) -> None:
        index = torch.tensor([self._slot_of(work) for work in works], device=self.device)
        rows = (index.view(-1, 1) * ROWS_PER_SLOT
                + torch.arange(ROWS_PER_SLOT, device=self.device)).flatten()
        tokens = self.batch.sequences[index, :, :length].repeat_interleave(ROWS_PER_SLOT, dim=0)
        positions = torch.arange(length, device=self.device).expand(rows.shape[0], -1)
        self.lm(tokens, positions, self.buffers.text_of_slots(index),
                self.buffers.condition_of_slots(index), PrefillKVCache(self.buffers, rows))

    def _finish_windows(self, slots: list[int]) -> None:
        """Collect the codes of windows that produced their last frame (highest slot first:
        freeing a slot moves the last one into it). A window boundary may read the device:
        the window's non-finite flag is checked here, not a step late."""
        for slot in sorted(slots, reverse=True):
            info = self.batch.infos[slot]
            job, window = info.work.job, info.work.window
            if bool(self.batch.nonfinite[slot]):
                self._fail(slot, self._nonfinite(job), clear=True)
                continue
            t = torch.arange(window.frames, device=self.device)
            index = t.view(1, -1) + 1 + self.batch.delays.view(-1, 1)
            job.output[:, window.start:window.end] = self.batch.sequences[slot].gather(1, index)
            self._release(slot)
            if window.index + 1 < len(job.windows):
                self.scheduler.submit(WindowWork(job, job.windows[window.index + 1]), front=True)
                continue
            if job.step + 1 < len(job.texts):
                # The next step edits this one's codes: no decode and re-encode in between.
                job.codes, job.output = job.output, job.output.clone()
                job.step += 1
                self.scheduler.submit(WindowWork(job, job.windows[0]), front=True)
                continue
            if job.request.on_progress:
                self._call_progress(job, job.frames_total, job.frames_total)
            if not job.future.done():
                job.future.set_result(job.output)

    def _report_progress(self, info: SlotInfo) -> None:
        """Frames generated so far over all steps (a window's prompt counts as done)."""
        window, job = info.work.window, info.work.job
        if job.request.on_progress:
            in_window = min(max(window.prompt, info.position - self.max_delay), window.frames)
            start, end = job.frame_range
            done = job.step * (end - start) + window.start + in_window - start
            self._call_progress(job, done, job.frames_total)

    @staticmethod
    def _call_progress(job: EngineJob, done: int, total: int) -> None:
        try:
            job.request.on_progress(done, total)  # type: ignore[misc]
        except Exception:
            log.exception("progress callback failed", extra={"job_id": job.request.job_id})

    def _slot_of(self, work: WindowWork) -> int:
        for slot, info in enumerate(self.batch.infos):
            if info.work is work:
                return slot
        raise KeyError(work.job.request.job_id)

    def _release(self, slot: int, clear: bool = False) -> None:
        """Free `slot`, moving the last slot in use into it (slots stay dense)."""
        last = self.batch.size - 1
        if clear:
            self.buffers.clear(slot)
        if slot != last:
            info = self.batch.infos[last]
            self.buffers.move(last, slot, min(info.position + 1, self.geometry.self_capacity),
                              info.frames + 1)
            self.batch.move(last, slot)
        self.buffers.reset(last)
        self.batch.pop()

    def _fail(self, slot: int, exc: BaseException, clear: bool = False) -> None:
        job = self.batch.infos[slot].work.job
        self._release(slot, clear)
        self._settle(job, exc)

    def _fail_job(self, job: EngineJob, exc: BaseException, clear: bool = False) -> None:
        """Fail `job` wherever it is (a slot, the queue)."""
        for slot in reversed(range(self.batch.size)):
            if self.batch.infos[slot].work.job is job:
                self._release(slot, clear)
        self.scheduler.remove_waiting(lambda work: work.job is job)
        self._settle(job, exc)

    @staticmethod
    def _settle(job: EngineJob, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    @staticmethod
    def _nonfinite(job: EngineJob) -> NonFiniteLogits:
        return NonFiniteLogits(f"the model produced non-finite logits for job {job.request.job_id}")

    # --- EngineLifecycle -----------------------------------------------------------------
    def _job_id(self, job: EngineJob) -> str:
        return job.request.job_id

    def _take_all_jobs(self) -> list[EngineJob]:
        jobs = [info.work.job for info in self.batch.infos]
        return jobs + [work.job for work in self.scheduler.remove_waiting(lambda work: True)]

