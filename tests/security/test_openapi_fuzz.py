"""Schemathesis against the gateway's own OpenAPI schema: a few hundred generated requests,
valid and invalid, with an API key, against a gateway on real Redis and SeaweedFS. No answer
may be a 5xx, and every answer must match the schema (status documented, content type,
headers, body).

Purely generated requests mostly stop at the first check (a random instruction is a 422, a
random job id a 404), so every other schema-valid case is steered past it: a real clip and a
supported instruction in an upload (the other fields stay generated, but for a time range,
which would mostly fall outside the clip), or a next round of a job this test created, the
id of such a job in a path. Those reach storage, the probe, the queue and the job views."""

from __future__ import annotations

import itertools
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
                                                            redis_url, s3_server, s3_bucket,
                                                            audio_factory):
    gw = run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket),
                                   rate_limit_per_minute=100_000, max_queued_jobs_per_key=100_000))
    store = gw.context.store
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    calls: dict[str, int] = {}
    statuses: dict[int, int] = {}
    authorized: dict[str, int] = {}  # answers other than 401, by operation
    per_operation: dict[str, dict[int, int]] = {}
    clip = audio_factory(seconds=1.0, sample_rate=16000, channels=1).read_bytes()
    created: list[str] = []  # jobs the steered uploads created
    steered = itertools.count()
    started = time.monotonic()

    def steer(case, n: int) -> None:
        if isinstance(case.body, dict) and "instruction" in case.body:
            # one input (the generated range may lie outside the clip: left out too)
            body = {name: value for name, value in case.body.items()
                    if name not in ("file", "source_job_id", "start_seconds", "end_seconds")}
            if n % 4 == 3 and created:  # a next round of a job not finished yet: 409
                case.body = {**body, "source_job_id": created[-1], "instruction": "Add drums"}
            else:
                case.body = {**body, "file": clip, "instruction": "Add drums"}
        if case.path_parameters and "job_id" in case.path_parameters and created:
            case.path_parameters = {**case.path_parameters,
                                    "job_id": created[n // 2 % len(created)]}

    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda operation: operation.method.upper() != "POST")  # jobs first
    for operation in operations:
        for mode, examples in EXAMPLES_PER_OPERATION.items():
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE
                               else [])

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                store.register_worker_heartbeat("fuzz", {"model": "tiny"})  # /readyz: ready
                n = next(steered)  # noqa: B023
                if mode is GenerationMode.POSITIVE and n % 2:  # noqa: B023 (run in the loop)
                    steer(case, n)
                # The valid key goes last so generated headers cannot replace it; a negative
                # case that mutated Authorization itself keeps its mutation (and gets a 401).
                generated = dict(case.headers or {})
                mutated = any(name.lower() == "authorization" for name in generated)
                if mode is GenerationMode.POSITIVE or not mutated:  # noqa: B023
                    case.headers = {**{name: value for name, value in generated.items()
                                       if name.lower() != "authorization"}, **AUTH}
                response = case.call_and_validate(base_url=gw.url, checks=checks,  # noqa: B023
                                                  timeout=30)
                label = f"{case.operation.method.upper()} {case.operation.path}"
                calls[label] = calls.get(label, 0) + 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                by_op = per_operation.setdefault(label, {})
                by_op[response.status_code] = by_op.get(response.status_code, 0) + 1
                if response.status_code != 401:
                    authorized[label] = authorized.get(label, 0) + 1
                if label == "POST /v1/edits" and response.status_code == 202:
                    created.append(response.json()["id"])

            try:
                run()
            except Unsatisfiable:
                # an operation without parameters or body has no invalid variant to send
                assert mode is GenerationMode.NEGATIVE, operation.path

    total = sum(calls.values())
    print(f"\n{total} generated requests in {time.monotonic() - started:.0f} s; by operation "
          f"{dict(sorted(calls.items()))}; by status {dict(sorted(statuses.items()))}; "
          f"by operation and status {per_operation}")
    assert total >= 300
    assert not any(status >= 500 for status in statuses)
    # Requests that all bounced off the auth check would test nothing behind it.
    for label, count in calls.items():
        assert authorized.get(label, 0) >= count // 2, (label, count, authorized.get(label))
    # the steered cases got past the first check: uploads were stored and queued, and the
    # job routes answered for real jobs
    assert per_operation["POST /v1/edits"].get(202, 0) >= 5, per_operation["POST /v1/edits"]
    assert per_operation["GET /v1/edits/{job_id}"].get(200, 0) >= 5
    assert per_operation["DELETE /v1/edits/{job_id}"].get(202, 0) >= 2  # canceled
