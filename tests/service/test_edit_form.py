"""The request contract is written once: the OpenAPI body of `POST /v1/edits` is generated
from `EditForm`, whose sampling ranges and output formats are the job schema's."""

from __future__ import annotations

from musicedit.jobs import OUTPUT_MEDIA_TYPES, SamplingParams
from service.edit_form import FORM_FIELDS, PARAM_FIELDS, openapi_request_body


def test_the_form_body_comes_from_the_job_schema():
    schema = openapi_request_body()["content"]["multipart/form-data"]["schema"]
    properties = schema["properties"]
    assert tuple(properties) == FORM_FIELDS
    assert set(PARAM_FIELDS) == set(SamplingParams.model_fields) <= set(FORM_FIELDS)
    assert schema["required"] == ["file", "instruction"] and not schema["additionalProperties"]
    assert properties["file"] == {"type": "string", "format": "binary",
                                  "description": properties["file"]["description"]}
    assert properties["output_format"]["enum"] == list(OUTPUT_MEDIA_TYPES)
    for name, field in SamplingParams.model_fields.items():
        part = properties[name]
        assert "anyOf" not in part and "title" not in part  # a part is sent or left out
        for bound in field.metadata:
            kind = type(bound).__name__.lower()  # annotated_types' Ge, Gt, Le, Lt
            key = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                   "lt": "exclusiveMaximum"}[kind]
            assert part[key] == getattr(bound, kind), (name, key)


def test_the_ranges_message_is_read_from_the_fields():
    assert SamplingParams.describe_ranges() == (
        "seed >= 0, top_k 0..2048, top_p 0..1, temperature (0, 10], cfg_coef 0..20")
