"""One edit's steps, run group by group on the engines that do them.

An instruction's steps each run on an engine (`musicedit.routing.route`): the generative model
(Instruct-MusicGen, `models.engine.EditEngine`) or the source separator (Demucs,
`models.separation.SeparationEngine`). Consecutive steps of one engine are one engine job
(`musicedit.routing.group_steps`): the generative engine chains them on the codes, the
separator does them in one pass. Each group edits the clip the group before it made: its
output is spliced into that clip over the time range (`models.audio.compose_result`), at the
input's rate and channels. The last group's output is left unspliced (`Stage`), so the
result is composed straight into the asked output shape, resampled once.

The worker (`worker.edit_job`) and the offline CLI (`models.file_edit`) both run edits
through `run_steps`; they differ in how they wait for an engine (the worker syncs progress,
the cancel flag and its lease meanwhile) and report progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
import torch

from models.audio import Crossfade, compose_result
from models.engine import EditRequest
from models.sampling import SamplingParams
from musicedit.routing import Engine, group_steps

if TYPE_CHECKING:
    from models.engine import EditEngine
    from models.separation import SeparationEngine

# Audio the separator sees on each side of a time range: Demucs separates better with context
# than from a hard cut; only the range itself is spliced into the result.
SEPARATION_CONTEXT_SECONDS = 1.0
# The unit of progress where no generative model is loaded (a separation-only worker):
# MusicGen's codec frame, so that a job's `frames_total` means the same on every worker.
PROGRESS_FRAME_RATE = 50.0

R = TypeVar("R", covariant=True)


class StepLike(Protocol):
    """A step of an edit (`musicedit.jobs.InstructionStep`)."""

    @property
    def operation(self) -> str: ...

    @property
    def stem(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def engine(self) -> Engine: ...


class Handle(Protocol[R]):
    """An engine's handle on a submitted job (`EditHandle`, `SeparationHandle`)."""

    def result(self, timeout: float | None = None) -> R: ...

    def cancel(self) -> None: ...


class MissingEngine(RuntimeError):
    """A step needs an engine this process did not load."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(f"no {engine} engine is loaded here")
        self.engine = engine


@dataclass
class Stage:
    """What one group of steps made, not yet spliced into the clip it edited."""

    audio: torch.Tensor | np.ndarray   # [C_e, M]: the range (or more), at `rate`
    rate: int
    start_seconds: float               # where `audio` starts in the clip
    crossfade: Crossfade               # how the range's ends blend into the clip
    codes: torch.Tensor | None         # after a generative group: the clip's codes

    def compose(self, base: np.ndarray, base_rate: int,
                time_range: tuple[float, float] | None, output_rate: int | None = None,
                output_channels: int | None = None) -> tuple[np.ndarray, int]:
        """`base` with the range replaced by this stage's audio, in the asked shape."""
        return compose_result(self.audio, self.rate, self.start_seconds, base, base_rate,
                              time_range, output_rate, output_channels,
                              crossfade=self.crossfade)


@dataclass
class StepsOutput:
    """The last group's output and the clip it edited (the input after the earlier groups)."""

    stage: Stage
    base: np.ndarray          # [C, N] float32 at `base_rate` (the input's rate and channels)
    base_rate: int
    frames_total: int         # progress frames over all steps

    def compose(self, time_range: tuple[float, float] | None, output_rate: int | None = None,
                output_channels: int | None = None) -> tuple[np.ndarray, int]:
        """The result in the asked shape (default: the input's)."""
        return self.stage.compose(self.base, self.base_rate, time_range, output_rate,
                                  output_channels)


@dataclass(frozen=True)
class GroupDone:
    """One group finished (for metrics and logs)."""

    engine: Engine
    steps: int
    seconds: float            # submit to output
    audio_seconds: float      # of audio the engine made
    detail: dict[str, Any]    # engine-specific figures (frames, segments)


class StepsProgress:
    """An edit's progress over all its steps: `total` frames, the current group spanning
    `span` of them after `offset`. The engines' `on_progress` callbacks (engine threads)
    report `(done, total)` in their own units (frames, segments), scaled into the span."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.offset = 0
        self.span = 0
        self.value: tuple[int, int] = (0, total)

    def begin(self, span: int) -> None:
        """The next group starts (after the current one)."""
        self.offset += self.span
        self.span = span
        self.value = (self.offset, self.total)

    def update(self, done: int, total: int) -> None:
        share = min(self.span, self.span * done // total) if total > 0 else 0
        self.value = (self.offset + share, self.total)


def range_frames(generative: EditEngine | None, wav: np.ndarray, rate: int,
                 codes: torch.Tensor | None, time_range: tuple[float, float] | None) -> int:
    """Progress frames of one pass over the range: the codec frames the model generates
    (counted from the input's length before it is encoded), or `PROGRESS_FRAME_RATE` frames a
    second without a generative model.

    Raises:
        ValueError: the range is not inside the clip.
    """
    if generative is not None:
        model = generative.model
        if codes is not None:
            clip_frames = codes.shape[-1]
        else:
            clip_frames = codec_frames(wav.shape[-1], rate, model.sample_rate, model.frame_rate)
        start, end = generative.frames_of(time_range, clip_frames)
        return end - start
    seconds = time_range[1] - time_range[0] if time_range else wav.shape[-1] / rate
    return max(1, math.ceil(seconds * PROGRESS_FRAME_RATE))


def codec_frames(num_samples: int, sample_rate: int, model_rate: int, frame_rate: float) -> int:
    """Codec frames the engine generates for a clip, counted as the engine counts them.

    Args:
        num_samples: the clip's length in samples at `sample_rate`.
        sample_rate: the clip's rate.
        model_rate: the codec's rate (32 kHz for MusicGen); the clip is resampled to it.
        frame_rate: codec frames per second (50 for MusicGen).

    Returns:
        `ceil(N' / hop)`, where `N'` is the resampled length (floored in float32, as the
        resampler does) and `hop = model_rate / frame_rate`.
    """
    resampled = num_samples
    if sample_rate != model_rate:
        resampled = int(math.floor(np.float32(model_rate * num_samples / sample_rate)))
    hop = int(round(model_rate / frame_rate))
    return -(-resampled // hop)


def run_steps(
    job_id: str,
    wav: np.ndarray,
    rate: int,
    steps: Sequence[StepLike],
    params: SamplingParams,
    *,
    generative: EditEngine | None,
    separation: SeparationEngine | None,
    wait: Callable[[Handle[Any], Engine], Any],
    progress: StepsProgress,
    time_range: tuple[float, float] | None = None,
    codes: torch.Tensor | None = None,
    on_group: Callable[[GroupDone], None] | None = None,
) -> StepsOutput:
    """Run `steps` on `wav` (`[C, N]` float32 at `rate`), group by group.

    Args:
        params: the sampling parameters of step 0; step k samples with `params.for_step(k)`
            whatever engine ran the steps before it.
        wait: waits for a handle and returns its output (`handle.result()`, or the worker's
            synced wait); the `Engine` says whose handle it is.
        progress: its total is set here; its `begin`/`update` follow the groups.
        codes: the input's codes (an edit of an earlier result): the first group, if
            generative, starts from them instead of encoding `wav`.
    Raises:
        MissingEngine: a step needs an engine that is None.
        DeviceFailed: an engine's device failed (the job is not at fault).
        musicedit.errors.AudioError: the audio cannot be edited (silent, NaN, ...).
        ValueError: the input is too long, the range is outside it, or the parameters or a
            stem do not suit the engine.
        What `wait` raises.
    """
    groups = group_steps([step.engine for step in steps])
    for engine, _, _ in groups:
        if (generative if engine == "generative" else separation) is None:
            raise MissingEngine(engine)
    frames = range_frames(generative, wav, rate, codes, time_range)
    # a generative group generates the range once per step; a separation group is one pass
    spans = [frames * (end - start) if engine == "generative" else frames
             for engine, start, end in groups]
    progress.total = sum(spans)
    base, stage = wav, None
    for (engine, first, last), span in zip(groups, spans, strict=True):
        if stage is not None:  # the next group edits what the last one made
            base, _ = stage.compose(base, rate, time_range)
        group = steps[first:last]
        progress.begin(span)
        started = time.perf_counter()
        if engine == "generative":
            assert generative is not None
            stage, detail = _generate(
                generative, job_id, base, rate, group, params.for_step(first), progress,
                time_range, codes if first == 0 else None, wait)
        else:
            assert separation is not None
            stage, detail = _separate(separation, job_id, base, rate, group, progress,
                                      time_range, wait)
        if on_group is not None:
            audio = stage.audio
            on_group(GroupDone(engine, last - first, time.perf_counter() - started,
                               audio.shape[-1] / stage.rate, detail))
    assert stage is not None
    progress.update(1, 1)
    return StepsOutput(stage, base, rate, progress.total)


def _generate(engine: EditEngine, job_id: str, wav: np.ndarray, rate: int,
              steps: Sequence[StepLike], params: SamplingParams, progress: StepsProgress,
              time_range: tuple[float, float] | None, codes: torch.Tensor | None,
              wait: Callable[[Handle[Any], Engine], Any]) -> tuple[Stage, dict[str, Any]]:
    request = EditRequest(job_id=job_id, wav=wav, sample_rate=rate,
                          instruction=tuple(step.text for step in steps), params=params,
                          on_progress=progress.update, time_range=time_range)
    if codes is not None:  # the next round of an edit: no re-encoding
        handle = engine.submit_codes(
            request, codes, num_samples=int(round(wav.shape[-1] * engine.model.sample_rate
                                                  / rate)))
    else:
        handle = engine.submit(request)
    output = wait(handle, "generative")
    stage = Stage(output.audio, output.sample_rate,
                  output.frame_range[0] / engine.model.frame_rate, "equal_power", output.codes)
    return stage, {"frames": output.frames}


def _separate(engine: SeparationEngine, job_id: str, wav: np.ndarray, rate: int,
              steps: Sequence[StepLike], progress: StepsProgress,
              time_range: tuple[float, float] | None,
              wait: Callable[[Handle[Any], Engine], Any]) -> tuple[Stage, dict[str, Any]]:
    """One separation for the whole group, of the range and `SEPARATION_CONTEXT_SECONDS`
    around it."""
    from models.separation import SeparationRequest, StemEdit, StemOperation

    first, last = 0, wav.shape[-1]
    if time_range is not None:
        first = max(0, math.floor((time_range[0] - SEPARATION_CONTEXT_SECONDS) * rate))
        last = min(last, math.ceil((time_range[1] + SEPARATION_CONTEXT_SECONDS) * rate))
    # the engine checks each operation and stem at submit (UnsupportedOperation, UnknownStem)
    edits = tuple(StemEdit(cast(StemOperation, step.operation), step.stem) for step in steps)
    handle = engine.submit(SeparationRequest(
        job_id=job_id, wav=np.ascontiguousarray(wav[:, first:last]), sample_rate=rate,
        edits=edits, on_progress=progress.update))
    output = wait(handle, "separation")
    return (Stage(output.audio, output.sample_rate, first / rate, "linear", None),
            {"segments": output.segments})
