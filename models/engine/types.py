"""What callers give the engine and get back: its configuration, requests, outputs, metrics."""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import audio
from ..sampling import SamplingParams

if tp.TYPE_CHECKING:
    from .runner import GraphBackend


@dataclass(frozen=True)
class StepInfo:
    """What one decode step did (for metrics)."""

    batch_size: int      # jobs decoded in this step
    bucket: int          # slots the runner computed (padded batch)
    seconds: float       # host time of the step (launches; the device may still be working)
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
    isolated_steps_total: int    # steps whose batched forward raised (see StepInfo.isolated)
    graph_capture_failures: int  # batch shapes that run eagerly because their capture failed
    failed: bool = False         # a sticky device error stopped the engine


@dataclass
class EngineConfig:
    """Engine settings.

    Attributes:
        max_batch_size: most jobs decoded together (each is 2 rows under CFG).
        kv_cache_budget_bytes: memory for per-slot caches; None = enough for max_batch_size
            on the CPU; on CUDA, `gpu_memory_fraction` of the free memory minus the
            headroom for codec work, the batched condition pass and prefill.
        gpu_memory_fraction: share of the free GPU memory the engine plans with (CUDA).
        max_input_seconds: longest accepted input (default 5 minutes).
        window_seconds: window length (the model's 5 s training clips).
        prompt_seconds: overlap carried from one window's output into the next.
        max_text_tokens: longest instruction in T5 tokens; None = the longest of the model's
            instruction templates, rounded up to a multiple of 8.
        batch_buckets: padded batch sizes (slots) the CUDA graphs are captured for.
        length_multiple: on CUDA, attention lengths are rounded up to a multiple of this
            (one graph per batch bucket and length bucket).
        use_cuda_graphs: capture the decode step of every bucket when the engine is built,
            replay them while serving.
        compile: `torch.compile` the decode step (warmed up for every bucket at build).
        progress_every_steps: how often `on_progress` callbacks run.
        condition_batch_size: most windows whose condition paths (and prompt prefills) run
            in one forward when several are admitted at the same step boundary.
        codec_chunk_seconds, codec_context_seconds: EnCodec encodes and decodes long audio
            in chunks of this length with this much context on each side (memory flat in
            the input's length).
        codec_concurrency: most codec chunks (encode or decode) running at once on the
            engine's device, from all caller threads together.
        silence_peak_threshold: inputs whose absolute peak is below this are refused as
            silent (the worker passes the gateway's `MUSICEDIT_SILENCE_PEAK_THRESHOLD`).
        on_step: called after every decode step with a `StepInfo`.
        on_fatal: called once, from the engine thread, when a sticky device error stops
            the engine (the worker exits so that its jobs run on healthy workers).
        graph_backend: how decode steps are captured and replayed; None = CUDA graphs on
            CUDA when `use_cuda_graphs` (tests substitute a recording backend).
    """

    max_batch_size: int = 8
    kv_cache_budget_bytes: int | None = None
    gpu_memory_fraction: float = 0.8
    max_input_seconds: float = 300.0
    window_seconds: float = 5.0
    prompt_seconds: float = 2.0
    max_text_tokens: int | None = None
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    length_multiple: int = 64
    use_cuda_graphs: bool = True
    compile: bool = False
    progress_every_steps: int = 10
    condition_batch_size: int = 16
    codec_chunk_seconds: float = 10.0
    codec_context_seconds: float = 1.0
    codec_concurrency: int = 2
    silence_peak_threshold: float = audio.SILENCE_PEAK_THRESHOLD
    on_step: tp.Callable[[StepInfo], None] | None = None
    on_fatal: tp.Callable[[BaseException], None] | None = None
    graph_backend: GraphBackend | None = field(default=None, repr=False)


MAX_STEPS = 4  # instructions one job may chain


@dataclass
class EditRequest:
    """One user's edit.

    Attributes:
        wav: `[C, N]` float32 samples at `sample_rate` (None when codes are given).
        instruction: the canonical template (`Music piece. Instruct: Add Drums.`), or up to
            `MAX_STEPS` of them applied one after another (a chain: step n + 1 edits step n's
            codes, with `params.for_step(n + 1)`).
        time_range: `(start, end)` seconds to edit; None edits the whole clip. The engine
            edits the codec frames covering it; outside them the codes are the input's.
    """

    job_id: str
    wav: np.ndarray | torch.Tensor | None
    sample_rate: int
    instruction: str | tuple[str, ...]
    params: SamplingParams = SamplingParams()
    on_progress: tp.Callable[[int, int], None] | None = None
    time_range: tuple[float, float] | None = None

    @property
    def steps(self) -> tuple[str, ...]:
        return (self.instruction,) if isinstance(self.instruction, str) else tuple(self.instruction)


@dataclass
class EditOutput:
    """A finished edit.

    Attributes:
        audio: `[1, N]` float32 at `sample_rate`: the decoded frames `frame_range` only.
        codes: `[K, T]` codes of the whole clip (the input's outside `frame_range`).
        frame_range: `(start, end)` frames the audio covers (the whole clip unless ranged).
    """

    audio: torch.Tensor
    sample_rate: int
    frames: int
    codes: torch.Tensor
    frame_range: tuple[int, int] = (0, 0)
