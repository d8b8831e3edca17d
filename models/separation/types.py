"""What callers give the separation engine and get back: configuration, requests, outputs."""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import numpy as np
import torch

from .. import audio
from .mixing import StemEdit


@dataclass
class SeparationConfig:
    """Separation engine settings.

    Attributes:
        max_batch_segments: most segments (of any jobs) computed in one step.
        memory_budget_bytes: device memory one forward may take; the batch is capped to
            what fits. None: on CUDA, ``gpu_memory_fraction`` of the free memory when the
            engine is built; on the CPU, no cap (host memory).
        gpu_memory_fraction: share of the free GPU memory the engine plans with (CUDA).
        dtype: precision of the forward: float32, or float16/bfloat16 under autocast on CUDA
            (the weights stay float32; the STFTs and norms keep autocast's float32 ops).
            None: float32. See docs/separation.md before lowering it.
        stack: run a step's segments as one stacked forward. None: on CUDA; on the CPU
            each segment is its own forward (a stacked batch is slower there).
        cpu_workers: threads running a step's single-segment forwards at once (when not
            stacked). Each forward uses torch's intra-op threads: the worker sets
            ``torch.set_num_threads`` so that their product does not exceed the cores.
        overlap: share of a segment that overlaps the next (demucs's default, 0.25).
        transition_power: sharpness of the cross-fade between segments (demucs's default, 1).
        max_input_seconds: longest accepted input (default 5 minutes).
        silence_peak_threshold: inputs whose absolute peak is below this are refused as
            silent (the worker passes the gateway's `MUSICEDIT_SILENCE_PEAK_THRESHOLD`).
        on_step: called after every forward with a :class:`SeparationStep`.
        on_fatal: called once, from the engine thread, when a sticky device error stops the
            engine (the worker exits so that its jobs run on healthy workers).
    """

    max_batch_segments: int = 8
    memory_budget_bytes: int | None = None
    gpu_memory_fraction: float = 0.8
    dtype: torch.dtype | None = None
    stack: bool | None = None
    cpu_workers: int = 1
    overlap: float = 0.25
    transition_power: float = 1.0
    max_input_seconds: float = 300.0
    silence_peak_threshold: float = audio.SILENCE_PEAK_THRESHOLD
    on_step: tp.Callable[[SeparationStep], None] | None = None
    on_fatal: tp.Callable[[BaseException], None] | None = None


@dataclass
class SeparationRequest:
    """One user's separation: stem operations applied in order to one input.

    Attributes:
        wav: ``[C, N]`` float samples at ``sample_rate``, C = 1 or 2.
        edits: e.g. ``(StemEdit("remove", "Vocals"), StemEdit("remove", "Drums"))``.
        on_progress: ``(segments done, segments in all)``, from the engine thread.
    """

    job_id: str
    wav: np.ndarray | torch.Tensor
    sample_rate: int
    edits: tp.Sequence[StemEdit]
    on_progress: tp.Callable[[int, int], None] | None = None


@dataclass
class SeparationOutput:
    audio: torch.Tensor   # [C, N] float32, the input's channels, length and rate
    sample_rate: int
    segments: int         # forwards' segments this job took


@dataclass(frozen=True)
class SeparationStep:
    """What one forward did (for metrics)."""

    segments: int         # segments computed (after isolation: those that succeeded)
    jobs: int             # distinct jobs among them
    seconds: float        # wall time of the forward and the overlap-add
    isolated: bool = False  # the batched forward raised and was re-run on parts of the batch


@dataclass(frozen=True)
class SeparationStats:
    active_jobs: int        # admitted, with segments left to compute
    waiting_jobs: int       # submitted, not yet admitted
    batch_segments: int     # most segments in one forward (the memory plan's result)
    steps_total: int
    segments_total: int
    audio_seconds_total: float  # separator-rate seconds of audio the segments covered
    isolated_steps_total: int
    failed: bool = False    # a sticky device error stopped the engine
