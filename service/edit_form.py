"""The multipart form of `POST /v1/edits`, written once.

`EditForm` names the fields and documents them: the OpenAPI request body is generated from
it (`openapi_request_body`), the sampling parameters' ranges come from
`musicedit.jobs.SamplingParams` (which also validates them) and the output formats from
`musicedit.jobs.OUTPUT_MEDIA_TYPES`. The body itself is streamed by `service.uploads` and
checked by `service.submissions`, not parsed through this model.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from musicedit.instructions import MAX_INSTRUCTION_CHARS
from musicedit.jobs import OutputFormat, SamplingParams
from service.uploads import FILE_FIELD


class EditForm(SamplingParams):
    """An edit request: the clip, the instruction, sampling parameters, output, webhook."""

    model_config = ConfigDict(extra="forbid")

    file: bytes = Field(description="WAV, FLAC, OGG or MP3; format is read from the bytes.")
    instruction: str = Field(
        max_length=MAX_INSTRUCTION_CHARS, examples=["Add drums"],
        description="add/remove/extract a stem, e.g. 'Remove the bass'.")
    output_format: OutputFormat = "wav"
    webhook_url: str | None = Field(
        None, json_schema_extra={"format": "uri"},
        examples=["https://example.com/hooks/musicedit"],
        description="Receives the signed `edit.*` event when the job ends.")


PARAM_FIELDS = tuple(SamplingParams.model_fields)
FORM_FIELDS = tuple(EditForm.model_fields)
assert FILE_FIELD in FORM_FIELDS


def openapi_request_body() -> dict[str, Any]:
    """`EditForm` as an OpenAPI `requestBody` (multipart/form-data).

    Titles are dropped and optional fields are given as their value's schema: a form part is
    either sent with a value or left out, never sent as null.
    """
    schema = EditForm.model_json_schema()
    schema.pop("title", None)
    schema["properties"] = {name: _form_part(part)
                            for name, part in schema["properties"].items()}
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
