"""The request contract is written once: the OpenAPI body of `POST /v1/edits` is generated
from `EditForm`, whose sampling ranges and output formats are the job schema's."""

from __future__ import annotations

from musicedit.jobs import OUTPUT_MEDIA_TYPES, SamplingParams
from service.edit_form import (
    FORM_FIELDS,
    OPTION_FIELDS,
    PARAM_FIELDS,
    EditOptions,
    openapi_request_body,
)


def test_the_form_body_comes_from_the_job_schema():
    schema = openapi_request_body()["content"]["multipart/form-data"]["schema"]
    properties = schema["properties"]
    assert tuple(properties) == FORM_FIELDS
    assert set(PARAM_FIELDS) == set(SamplingParams.model_fields) <= set(FORM_FIELDS)
    # `file` or `source_job_id`: one of the two (checked by the gateway, stated in both fields)
    assert schema["required"] == ["instruction"] and not schema["additionalProperties"]
    assert "source_job_id" in properties["file"]["description"]
    assert properties["file"] == {"type": "string", "format": "binary",
                                  "description": properties["file"]["description"]}
    assert properties["output_format"]["enum"] == list(OUTPUT_MEDIA_TYPES)
    assert (properties["output_channels"]["minimum"], properties["output_channels"]["maximum"]) == (
        1, 2)
    fields = {**SamplingParams.model_fields, **EditOptions.model_fields}
    assert set(OPTION_FIELDS) <= set(FORM_FIELDS)
    for name, field in fields.items():
        part = properties[name]
        assert "anyOf" not in part and "title" not in part  # a part is sent or left out
        for bound in field.metadata:
            kind = type(bound).__name__.lower()  # annotated_types' Ge, Gt, Le, Lt
            key = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                   "lt": "exclusiveMaximum"}.get(kind)
            if key is None:  # not a bound (pydantic's AllowInfNan)
                continue
            assert part[key] == getattr(bound, kind), (name, key)


def test_the_ranges_message_is_read_from_the_fields():
    assert SamplingParams.describe_ranges() == (
        "seed >= 0, top_k 0..2048, top_p 0..1, temperature (0, 10], cfg_coef 0..20")
