"""What this deployment can do (`GET /v1/capabilities`), built from the gateway's settings and
what the live workers report in their heartbeats.

Nothing here is typed twice: operations come from the instruction templates, sampling ranges
and defaults from `SamplingParams`, formats from the audio probe and the output types, limits
from `Settings`. A stem or operation no live worker serves is not listed (a worker reports
what each of its engines serves in its heartbeat, `engines`; one too old to report them is
taken to run the generative model on the gateway's stems).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from musicedit.audio_probe import MEDIA_TYPES
from musicedit.instructions import MAX_INSTRUCTION_CHARS, TEMPLATES
from musicedit.jobs import OUTPUT_MEDIA_TYPES, SamplingParams
from musicedit.settings import Settings

# One phrase per operation that the instruction parser accepts, for examples.
EXAMPLE_PHRASES = {"add": "Add {stem}", "remove": "Remove the {stem}", "extract": "Only {stem}"}

# Optional features of the API and whether this release serves them.
FEATURES: dict[str, bool] = {
    "events": True,          # GET /v1/edits/{id}/events and stream tokens
    "webhooks": True,        # webhook_url on submit
    "time_ranges": True,     # start_seconds / end_seconds on submit
    "chains": True,          # up to 4 instructions in one job, "replace X with Y"
    "source_jobs": True,     # source_job_id instead of a file
    "output_shape": True,    # output_sample_rate / output_channels on submit
}


class ParamRange(BaseModel):
    """One sampling parameter, in JSON Schema's words."""

    type: Literal["integer", "number"]
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None
    default: float | None = Field(None, description="null: drawn per job (the seed).")
    description: str


class Limits(BaseModel):
    input_formats: list[str] = Field(description="Read from the bytes, not the file name.")
    output_formats: list[str]
    min_duration_seconds: float
    max_duration_seconds: float
    max_upload_bytes: int
    max_sample_rate: int
    max_channels: int
    max_instruction_chars: int


class LiveWorkers(BaseModel):
    count: int = Field(description="Workers that heartbeated within WORKER_HEARTBEAT_TTL.")
    models: list[str]


class EngineCapabilities(BaseModel):
    """What one engine does here: `engine=auto` picks per step (see `POST /v1/edits`)."""

    operations: list[str]
    stems: list[str]


class Capabilities(BaseModel):
    """What an edit may ask for here, now."""

    operations: list[str] = Field(description="Operations a live worker serves.")
    stems: list[str] = Field(description="Stems the gateway accepts and a live worker serves.")
    engines: dict[str, EngineCapabilities] = Field(
        description="Per engine (`generative`: Instruct-MusicGen; `separation`: the source "
        "separator), the operations and stems a live worker serves; an engine no live worker "
        "runs is left out.")
    instruction_examples: list[str]
    limits: Limits
    sampling: dict[str, ParamRange] = Field(description="Ranges and defaults of the sampling "
                                            "parameters of `POST /v1/edits`.")
    features: dict[str, bool] = Field(description="Optional features and whether they are on.")
    workers: LiveWorkers


def sampling_ranges() -> dict[str, ParamRange]:
    """`SamplingParams`' bounds and defaults as JSON Schema keywords."""
    ranges = {}
    for name, b in SamplingParams.bounds().items():
        low = {"minimum" if b.low_inclusive else "exclusive_minimum": b.low}
        high = {"maximum" if b.high_inclusive else "exclusive_maximum": b.high}
        ranges[name] = ParamRange(type="integer" if b.integer else "number", **low, **high,
                                  default=b.default, description=b.description)
    return ranges


def build_capabilities(settings: Settings, workers: Iterable[dict[str, Any]]) -> Capabilities:
    """Capabilities of a gateway with `settings` whose live workers reported `workers`."""
    workers = list(workers)
    accepted = {"generative": settings.stems, "separation": settings.effective_separation_stems}
    served: dict[str, tuple[set[str], set[str]]] = {}
    for worker in workers:
        for engine, serves in worker_engines(worker, settings).items():
            operations_, stems_ = served.setdefault(engine, (set(), set()))
            operations_.update(serves.get("operations", ()))
            stems_.update(serves.get("stems", ()))
    engines = {}
    for engine, (operations_, stems_) in served.items():
        if engine not in accepted:
            continue
        listed = EngineCapabilities(
            operations=[op for op in TEMPLATES if op in operations_],
            stems=[stem for stem in accepted[engine] if stem in stems_])
        if listed.operations and listed.stems:
            engines[engine] = listed
    stems = [stem for stem in settings.instruction_stems
             if any(stem in listed.stems for listed in engines.values())]
    operations = [op for op in TEMPLATES
                  if any(op in listed.operations for listed in engines.values())]
    return Capabilities(
        operations=operations,
        stems=stems,
        engines=engines,
        instruction_examples=[EXAMPLE_PHRASES[op].format(stem=stem.lower())
                              for op in operations for stem in stems
                              if any(op in listed.operations and stem in listed.stems
                                     for listed in engines.values())],
        limits=Limits(
            input_formats=list(MEDIA_TYPES), output_formats=list(OUTPUT_MEDIA_TYPES),
            min_duration_seconds=settings.min_input_seconds,
            max_duration_seconds=settings.max_input_seconds,
            max_upload_bytes=settings.max_upload_bytes,
            max_sample_rate=settings.max_sample_rate, max_channels=settings.max_channels,
            max_instruction_chars=MAX_INSTRUCTION_CHARS,
        ),
        sampling=sampling_ranges(),
        features=dict(FEATURES),
        workers=LiveWorkers(count=len(workers),
                            models=sorted({str(worker.get("model", "")) for worker in workers})),
    )


def worker_engines(worker: dict[str, Any], settings: Settings) -> dict[str, dict[str, Any]]:
    """What a worker's heartbeat says each of its engines serves. A heartbeat from before
    separation (no `engines`) describes one generative model by `stems` and `operations`
    (or, older still, neither: the gateway's settings)."""
    engines = worker.get("engines")
    if isinstance(engines, dict):
        return engines
    return {"generative": {"stems": worker.get("stems", settings.stems),
                           "operations": worker.get("operations", list(TEMPLATES))}}
