"""The job schema shared by gateway, job store and worker."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from enum import Enum
from typing import Literal, NamedTuple, cast

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field

from musicedit.errors import InvalidRequest
from musicedit.instructions import Instruction
from musicedit.routing import Engine


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.canceled)


OutputFormat = Literal["wav", "flac"]
# The formats an edit is written in, and the media type it is stored and served with.
OUTPUT_MEDIA_TYPES: dict[OutputFormat, str] = {"wav": "audio/wav", "flac": "audio/flac"}
SEED_MAX = 2**63 - 1  # seeds are signed 64-bit integers everywhere they are stored
OUTPUT_SAMPLE_RATE_MIN, OUTPUT_SAMPLE_RATE_MAX = 8000, 192000
# The shortest time range an edit accepts (the model needs context to edit).
MIN_RANGE_SECONDS = 0.5


class SamplingParams(BaseModel):
    """Decoding parameters; the defaults are the Instruct-MusicGen paper's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(
        None, ge=0, le=SEED_MAX,
        description="Random seed. Left out on submit, one is drawn for the job (from its id) "
        "and shown here, so any result can be reproduced by resubmitting with it.",
    )
    top_k: int = Field(100, ge=0, le=2048, description="Top-k sampling; 0 disables it.")
    top_p: float = Field(0.0, ge=0.0, le=1.0, description="Nucleus sampling; 0 disables it.")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Softmax temperature.")
    cfg_coef: float = Field(3.0, ge=0.0, le=20.0, description="Classifier-free guidance scale.")

    @classmethod
    def bounds(cls) -> dict[str, ParamBounds]:
        """Each field's bounds and default, read from the fields themselves."""
        found = {}
        for name, field in cls.model_fields.items():
            low = next(m for m in field.metadata if isinstance(m, (Ge, Gt)))
            high = next(m for m in field.metadata if isinstance(m, (Le, Lt)))
            found[name] = ParamBounds(
                low=cast(float, low.ge if isinstance(low, Ge) else low.gt),
                low_inclusive=isinstance(low, Ge),
                high=cast(float, high.le if isinstance(high, Le) else high.lt),
                high_inclusive=isinstance(high, Le), default=field.default,
                integer=field.annotation in (int, int | None),
                description=field.description or "")
        return found

    @classmethod
    def describe_ranges(cls) -> str:
        """The allowed values, read from the fields' bounds: `seed >= 0, top_k 0..2048, ...`."""
        parts = []
        for name, b in cls.bounds().items():
            if b.high == SEED_MAX:  # the storage limit, not a choice worth stating
                parts.append(f"{name} >= {b.low:g}")
            elif b.low_inclusive and b.high_inclusive:
                parts.append(f"{name} {b.low:g}..{b.high:g}")
            else:
                opening = "[" if b.low_inclusive else "("
                closing = "]" if b.high_inclusive else ")"
                parts.append(f"{name} {opening}{b.low:g}, {b.high:g}{closing}")
        return ", ".join(parts)


# Step k of a chained edit samples with seed + k * this (mod 2**63), so that a chain gives what
# separate edits of each other's results give with those seeds (shown in `instruction.steps`).
_STEP_SEED_STRIDE = 0x9E3779B97F4A7C15 % 2**63


def step_seed(seed: int, step: int) -> int:
    """The seed step `step` of an edit seeded `seed` samples with (`step_seed(s, 0) == s`)."""
    return (seed + step * _STEP_SEED_STRIDE) % 2**63


class ParamBounds(NamedTuple):
    """One sampling parameter's allowed values (`SamplingParams.bounds`)."""

    low: float
    low_inclusive: bool
    high: float
    high_inclusive: bool
    default: float | None
    integer: bool
    description: str


def seed_for_job(job_id: str) -> int:
    """The seed of a job submitted without one: derived from its id, so every attempt (and
    every reader) agrees on it."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:15], 16)


Operation = Literal["add", "remove", "extract"]


class InstructionStep(BaseModel):
    """One step of an edit: `text` is the exact template the model sees, `seed` the seed the
    step samples with (a chain's step k: `step_seed(params.seed, k)`)."""

    model_config = ConfigDict(frozen=True)

    operation: Operation
    stem: str
    text: str
    seed: int | None = None
    engine: Engine = Field(
        "generative", description="What runs the step: `generative` (Instruct-MusicGen) or "
        "`separation` (the source separator); see `engine` on submit.")


class NormalizedInstruction(BaseModel):
    """The instruction as stored and shown.

    A one-step instruction is described by `operation`, `stem` and `text` (as always); a chain
    has `operation` "chain", no `stem`, and its templates joined by " | " in `text`. `steps`
    lists every step, in order, either way.
    """

    model_config = ConfigDict(frozen=True)

    operation: Literal["add", "remove", "extract", "chain"]
    stem: str | None
    text: str
    steps: list[InstructionStep] = Field(default_factory=list)

    @classmethod
    def from_instruction(cls, instruction: Instruction) -> NormalizedInstruction:
        return cls.from_steps((instruction,))

    @classmethod
    def from_steps(cls, steps: Sequence[Instruction], seed: int | None = None,
                   engines: Sequence[Engine] | None = None) -> NormalizedInstruction:
        """The instruction of `steps` (one or a chain); with `seed`, each step's own; with
        `engines` (`musicedit.routing.route`), what runs each step (default: the generative
        model)."""
        engines = engines or ["generative"] * len(steps)
        if len(engines) != len(steps):
            raise ValueError(f"{len(steps)} steps but {len(engines)} engines")
        listed = [InstructionStep(operation=step.operation, stem=step.stem, text=step.text,
                                  seed=None if seed is None else step_seed(seed, index),
                                  engine=engine)
                  for index, (step, engine) in enumerate(zip(steps, engines, strict=True))]
        if len(listed) == 1:
            only = listed[0]
            return cls(operation=only.operation, stem=only.stem, text=only.text, steps=listed)
        return cls(operation="chain", stem=None, text=" | ".join(s.text for s in listed),
                   steps=listed)

    def with_seed(self, seed: int) -> NormalizedInstruction:
        """The same steps with the seeds a job seeded `seed` gives them."""
        return self.model_copy(update={"steps": [
            step.model_copy(update={"seed": step_seed(seed, index)})
            for index, step in enumerate(self.all_steps)]})

    @property
    def engines(self) -> list[Engine]:
        """What runs each step, in order."""
        return [step.engine for step in self.all_steps]

    @property
    def all_steps(self) -> list[InstructionStep]:
        """The steps (a job stored before chains existed has none listed: its one step)."""
        if self.steps:
            return self.steps
        assert self.operation != "chain" and self.stem is not None
        return [InstructionStep(operation=self.operation, stem=self.stem, text=self.text)]


class TimeRange(BaseModel):
    """Seconds of the input an edit changes; outside them the result is the input."""

    model_config = ConfigDict(frozen=True)

    start_seconds: float = Field(ge=0.0)
    end_seconds: float = Field(gt=0.0)


def time_range_in(start: float | None, end: float | None,
                  duration: float) -> TimeRange | None:
    """The range to edit in a clip of `duration` seconds: `start` defaults to the clip's
    start, `end` to its end; None when nothing or the whole clip is asked for.

    Raises:
        InvalidRequest: the range is empty, reversed, shorter than `MIN_RANGE_SECONDS` or
            outside the clip; the message states the clip's duration and the rules.
    """
    if start is None and end is None:
        return None
    first = start or 0.0
    last = duration if end is None else end
    if last <= first or last - first < MIN_RANGE_SECONDS or last > duration + 1e-3:
        raise InvalidRequest(
            f"The time range {first:g}-{last:g} s cannot be edited: the clip is {duration:.3f} "
            f"s long. Send 0 <= start_seconds < end_seconds <= {duration:.3f}, at least "
            f"{MIN_RANGE_SECONDS:g} s apart (leave either out for the clip's start or end).",
            [{"loc": ["body", "end_seconds" if last > duration else "start_seconds"],
              "msg": "range outside the clip or too short"}],
        )
    last = min(last, duration)
    if first == 0.0 and last == duration:
        return None  # the whole clip
    return TimeRange(start_seconds=first, end_seconds=last)


class OutputShape(BaseModel):
    """Sample rate and channels of a result (by default the input's)."""

    model_config = ConfigDict(frozen=True)

    sample_rate: int = Field(ge=1)
    channels: int = Field(ge=1)


class ResultAudio(BaseModel):
    """What the worker wrote: the audio file and, for the next round, the codes the model
    produced (an edit of this result starts from them, with no re-encoding)."""

    format: str
    sample_rate: int
    channels: int
    duration_seconds: float
    size_bytes: int
    codes_key: str | None = None


class Progress(BaseModel):
    frames_done: int = 0
    frames_total: int = 0


class ProgressView(Progress):
    """`Progress` as the API shows it."""

    fraction: float = Field(0.0, ge=0.0, le=1.0, description="frames_done / frames_total "
                            "(0 until the worker knows the total, 1 once succeeded).")

    @classmethod
    def of(cls, job: EditJob) -> ProgressView:
        done, total = job.progress.frames_done, job.progress.frames_total
        fraction = 1.0 if job.state is JobState.succeeded else (
            min(1.0, done / total) if total > 0 else 0.0)
        return cls(frames_done=done, frames_total=total, fraction=fraction)


class Timings(BaseModel):
    """Unix timestamps (seconds)."""

    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


class InputAudio(BaseModel):
    """What the gateway's probe found in the upload."""

    format: str
    sample_rate: int
    channels: int
    duration_seconds: float
    size_bytes: int


class Lease(BaseModel):
    worker_id: str
    expires_at: float


class EditJob(BaseModel):
    """One edit request and everything the system knows about it."""

    id: str
    owner: str = Field(description="Name of the API key that submitted the job.")
    state: JobState = JobState.queued
    instruction: NormalizedInstruction
    params: SamplingParams = Field(default_factory=SamplingParams)
    output_format: OutputFormat = "wav"
    webhook_url: str | None = None
    input_key: str
    input: InputAudio
    input_codes_key: str | None = Field(
        None, description="Codes of the input (a previous result's), so it is not re-encoded.")
    time_range: TimeRange | None = None
    output: OutputShape | None = Field(None, description="None: the input's rate and channels.")
    source_job_id: str | None = None
    result_key: str | None = None
    result: ResultAudio | None = None
    progress: Progress = Field(default_factory=Progress)
    timings: Timings = Field(default_factory=Timings)
    attempts: int = 0
    error: str | None = None
    cancel_requested: bool = False
    dead_lettered: bool = Field(False, description="Failed for good; kept for inspection.")
    lease: Lease | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    seq: int = Field(0, description="FIFO order among all jobs, assigned by the job store.")


class EditJobView(BaseModel):
    """What the API returns for a job (no storage keys, leases or owner internals)."""

    id: str
    status: JobState
    instruction: NormalizedInstruction
    params: SamplingParams
    output_format: OutputFormat
    input: InputAudio
    time_range: TimeRange | None = Field(
        None, description="Seconds edited; null: the whole clip.")
    output: OutputShape = Field(description="Sample rate and channels of the result.")
    source_job_id: str | None = Field(
        None, description="The job whose result this edit edits; null: an uploaded file.")
    progress: ProgressView
    queue_position: int | None = Field(
        None, description="Queued jobs ahead of this one (0 = next); null unless queued."
    )
    timings: Timings
    attempts: int
    error: str | None = None
    cancel_requested: bool = False
    webhook_url: str | None = None
    status_url: str
    audio_url: str | None = Field(None, description="Where to fetch the result once succeeded.")

    @classmethod
    def from_job(
        cls, job: EditJob, base_url: str, queue_position: int | None = None
    ) -> EditJobView:
        status_url = f"{base_url.rstrip('/')}/v1/edits/{job.id}"
        return cls(
            id=job.id,
            status=job.state,
            instruction=job.instruction,
            params=job.params,
            output_format=job.output_format,
            input=job.input,
            time_range=job.time_range,
            output=job.output or OutputShape(sample_rate=job.input.sample_rate,
                                             channels=job.input.channels),
            source_job_id=job.source_job_id,
            progress=ProgressView.of(job),
            queue_position=queue_position,
            timings=job.timings,
            attempts=job.attempts,
            error=job.error,
            cancel_requested=job.cancel_requested,
            webhook_url=job.webhook_url,
            status_url=status_url,
            audio_url=f"{status_url}/audio" if job.state is JobState.succeeded else None,
        )


class EditJobList(BaseModel):
    items: list[EditJobView]
    next_cursor: int | None = Field(None, description="Pass as `before` for the next page.")


WebhookEventName = Literal["edit.succeeded", "edit.failed", "edit.canceled"]


class WebhookEvent(BaseModel):
    """Body of the webhook POST sent when a job reaches a terminal state."""

    event: WebhookEventName
    job: EditJobView

    @classmethod
    def for_job(cls, job: EditJob, base_url: str) -> WebhookEvent:
        return cls(event=f"edit.{job.state.value}", job=EditJobView.from_job(job, base_url))
