"""Schemathesis against the gateway's own OpenAPI schema: a few hundred generated requests,
valid and invalid, with an API key, against a gateway on real Redis and SeaweedFS. No answer
may be a 5xx, and every answer must match the schema (status documented, content type,
headers, body)."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

AUTH = {"Authorization": "Bearer alice-secret-key"}
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.mark.slow
def test_generated_requests_get_no_5xx_and_match_the_schema(make_settings, run_gateway,
                                                            redis_url, s3_server, s3_bucket):
    gw = run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket),
                                   rate_limit_per_minute=100_000, max_queued_jobs_per_key=100_000))
    store = gw.context.store
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    calls: dict[str, int] = {}
    statuses: dict[int, int] = {}
    started = time.monotonic()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES_PER_OPERATION.items():
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE
                               else [])

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                store.register_worker_heartbeat("fuzz", {"model": "tiny"})  # /readyz: ready
                headers = {**AUTH, **(case.headers or {})}
                response = case.call_and_validate(base_url=gw.url, headers=headers,
                                                  checks=checks, timeout=30)  # noqa: B023
                label = f"{case.operation.method.upper()} {case.operation.path}"
                calls[label] = calls.get(label, 0) + 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            try:
                run()
            except Unsatisfiable:
                # an operation without parameters or body has no invalid variant to send
                assert mode is GenerationMode.NEGATIVE, operation.path

    total = sum(calls.values())
    print(f"\n{total} generated requests in {time.monotonic() - started:.0f} s; by operation "
          f"{dict(sorted(calls.items()))}; by status {dict(sorted(statuses.items()))}")
    assert total >= 300
    assert not any(status >= 500 for status in statuses)
