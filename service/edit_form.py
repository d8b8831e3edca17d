"""The multipart form of `POST /v1/edits`, written once.

`EditForm` names the fields and documents them: the OpenAPI request body is generated from
it (`openapi_request_body`), the sampling parameters' ranges come from
`musicedit.jobs.SamplingParams` (which also validates them) and the output formats from
`musicedit.jobs.OUTPUT_MEDIA_TYPES`. The body itself is streamed by `service.uploads` and
checked by `service.submissions`, not parsed through this model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from musicedit.instructions import MAX_INSTRUCTION_CHARS, MAX_STEPS
from musicedit.jobs import (
    MIN_RANGE_SECONDS,
    OUTPUT_SAMPLE_RATE_MAX,
    OUTPUT_SAMPLE_RATE_MIN,
    OutputFormat,
    SamplingParams,
)
from musicedit.routing import EngineChoice
from service.uploads import FILE_FIELD


class EditOptions(BaseModel):
    """The form's numeric options besides sampling: the range to edit and the output shape
    (validated with this model by `service.submissions`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_seconds: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, examples=[30.0],
        description="Edit only from here (default 0); outside the range the result is the "
        "input, sample for sample.")
    end_seconds: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, examples=[60.0],
        description=f"Edit only up to here (default: the end of the clip). At least "
        f"{MIN_RANGE_SECONDS:g} s after `start_seconds`.")
    output_sample_rate: int | None = Field(
        None, ge=OUTPUT_SAMPLE_RATE_MIN, le=OUTPUT_SAMPLE_RATE_MAX, examples=[48000],
        description="Sample rate of the result (default: the input's). The model's audio is "
        "band-limited to 16 kHz whatever the rate.")
    output_channels: int | None = Field(
        None, ge=1, le=2, description="1 or 2 channels (default: the input's).")


class EditForm(EditOptions, SamplingParams):
    """An edit request: the clip (or an earlier result), the instruction, the range to edit,
    sampling parameters, output, webhook."""

    model_config = ConfigDict(extra="forbid")

    file: bytes | None = Field(
        None, description="WAV, FLAC, OGG or MP3; format is read from the bytes. Send either "
        "`file` or `source_job_id`.")
    source_job_id: str | None = Field(
        None, examples=["3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c"],
        description="Edit the result of one of your succeeded jobs instead of uploading a file "
        "(no re-encoding: the next round starts from that result's codes).")
    instruction: str = Field(
        max_length=MAX_INSTRUCTION_CHARS,
        examples=["Add drums", "Replace the guitar with piano",
                  "Remove the bass, then add drums"],
        description=f"add/remove/extract a stem, replace one with another, or up to {MAX_STEPS} "
        "steps chained with 'then'/'and', e.g. 'Remove the bass'.")
    engine: EngineChoice = Field(
        "auto", description="What runs the steps: `auto` adds stems with the generative model "
        "(Instruct-MusicGen) and removes or extracts them with the source separator (Demucs) "
        "where it knows the stem, which keeps the rest of the mix as it was; `generative` or "
        "`separation` forces one engine for every step (422 if it cannot do one). "
        "`GET /v1/capabilities` lists each engine's operations and stems.")
    output_format: OutputFormat = "wav"
    webhook_url: str | None = Field(
        None, json_schema_extra={"format": "uri"},
        examples=["https://example.com/hooks/musicedit"],
        description="Receives the signed `edit.*` event when the job ends.")


PARAM_FIELDS = tuple(SamplingParams.model_fields)
OPTION_FIELDS = tuple(EditOptions.model_fields)
# The form's fields in the order the documentation shows them.
FORM_FIELDS = ("file", "source_job_id", "instruction", "engine", "start_seconds", "end_seconds",
               *PARAM_FIELDS, "output_format", "output_sample_rate", "output_channels",
               "webhook_url")
assert set(FORM_FIELDS) == set(EditForm.model_fields)
assert FILE_FIELD in FORM_FIELDS


def openapi_request_body() -> dict[str, Any]:
    """`EditForm` as an OpenAPI `requestBody` (multipart/form-data).

    Titles are dropped and optional fields are given as their value's schema: a form part is
    either sent with a value or left out, never sent as null.
    """
    schema = EditForm.model_json_schema()
    schema.pop("title", None)
    parts = schema["properties"]
    schema["properties"] = {name: _form_part(parts[name]) for name in FORM_FIELDS}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _form_part(schema: dict[str, Any]) -> dict[str, Any]:
    part = {key: value for key, value in schema.items() if key != "title"}
    variants = part.pop("anyOf", None)
    if variants is not None:
        (value,) = [variant for variant in variants if variant != {"type": "null"}]
        part = {**value, **part}
        if part.get("default", ...) is None:
            del part["default"]
    return part
