"""`GET /v1/capabilities` over HTTP against real Redis: it reflects the gateway's settings and
what live workers report, and retypes nothing."""

from __future__ import annotations

import httpx
import pytest

from musicedit.capabilities import EXAMPLE_PHRASES
from musicedit.client import MusiceditClient
from musicedit.instructions import TEMPLATES, normalize_instruction
from musicedit.jobs import SamplingParams

ALICE = {"Authorization": "Bearer alice-secret-key"}


@pytest.fixture
def gateway(make_settings, run_gateway, redis_url, s3_server, s3_bucket):
    return run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket),
                                     stems="Drums,Bass,Piano,Guitar"))


def capabilities(gateway) -> dict:
    response = httpx.get(f"{gateway.url}/v1/capabilities", headers=ALICE)
    assert response.status_code == 200, response.text
    return response.json()


def heartbeat(gateway, worker_id: str, **info) -> None:
    gateway.context.store.register_worker_heartbeat(worker_id, {"model": "tiny", **info})


def test_without_a_live_worker_no_stem_is_offered(gateway):
    body = capabilities(gateway)
    assert body["stems"] == [] and body["operations"] == [] and body["workers"]["count"] == 0
    assert body["instruction_examples"] == []


def test_stems_are_those_a_live_worker_serves(gateway):
    heartbeat(gateway, "w1", stems=["Drums", "Bass"], operations=["add", "remove", "extract"])
    heartbeat(gateway, "w2", stems=["Bass", "Synth"], operations=["add", "remove"])
    body = capabilities(gateway)
    # Synth: no gateway accepts it; Piano and Guitar: no live worker serves them
    assert body["stems"] == ["Drums", "Bass"]
    assert body["operations"] == list(TEMPLATES)
    assert body["workers"] == {"count": 2, "models": ["tiny"]}
    stems = body["stems"]
    assert len(body["instruction_examples"]) == len(TEMPLATES) * len(stems)
    for example in body["instruction_examples"]:  # every example is accepted as it is
        normalize_instruction(example, stems)


def test_a_worker_too_old_to_report_stems_serves_the_gateways(gateway):
    heartbeat(gateway, "old")
    assert capabilities(gateway)["stems"] == ["Drums", "Bass", "Piano", "Guitar"]


def test_limits_sampling_and_features(gateway):
    heartbeat(gateway, "w1", stems=["Drums"], operations=list(TEMPLATES))
    body = capabilities(gateway)
    settings = gateway.context.settings
    assert body["limits"] == {
        "input_formats": ["WAV", "FLAC", "OGG", "MP3"], "output_formats": ["wav", "flac"],
        "min_duration_seconds": settings.min_input_seconds,
        "max_duration_seconds": settings.max_input_seconds,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_sample_rate": settings.max_sample_rate, "max_channels": settings.max_channels,
        "max_instruction_chars": 200,
    }
    assert set(body["sampling"]) == set(SamplingParams.model_fields)
    assert body["sampling"]["top_k"] == {
        "type": "integer", "minimum": 0, "exclusive_minimum": None, "maximum": 2048,
        "exclusive_maximum": None, "default": 100,
        "description": SamplingParams.model_fields["top_k"].description}
    temperature = body["sampling"]["temperature"]
    assert (temperature["exclusive_minimum"], temperature["maximum"]) == (0, 10)
    assert body["sampling"]["seed"]["default"] is None
    assert body["features"] == {"events": True, "webhooks": True, "time_ranges": True,
                                "chains": True, "source_jobs": True, "output_shape": True}


def test_capabilities_need_a_key_and_the_client_reads_them(gateway):
    assert httpx.get(f"{gateway.url}/v1/capabilities").status_code == 401
    heartbeat(gateway, "w1", stems=["Piano"], operations=["extract"])
    with MusiceditClient(gateway.url, "alice-secret-key") as client:
        caps = client.capabilities()
    assert caps.stems == ["Piano"] and caps.operations == ["extract"]
    assert caps.instruction_examples == [EXAMPLE_PHRASES["extract"].format(stem="piano")]


def test_each_engine_lists_what_its_live_workers_serve(gateway):
    """A MusicGen worker and a separation-only worker: each engine's operations and stems, the
    union at the top, and examples only of what some engine does."""
    heartbeat(gateway, "gpu", engines={"generative": {"stems": ["Drums", "Bass", "Piano",
                                                                "Guitar"],
                                                      "operations": list(TEMPLATES)}})
    heartbeat(gateway, "cpu", engines={"separation": {
        "stems": ["Drums", "Bass", "Vocals", "Guitar", "Piano"],
        "operations": ["remove", "extract"]}})
    body = capabilities(gateway)
    assert body["engines"] == {
        "generative": {"operations": list(TEMPLATES),
                       "stems": ["Drums", "Bass", "Piano", "Guitar"]},
        "separation": {"operations": ["remove", "extract"],
                       "stems": ["Drums", "Bass", "Vocals", "Guitar", "Piano"]}}
    assert body["stems"] == ["Drums", "Bass", "Piano", "Guitar", "Vocals"]
    assert "Only vocals" in body["instruction_examples"]
    assert "Add vocals" not in body["instruction_examples"]


def test_without_a_separation_worker_vocals_are_not_offered(gateway):
    heartbeat(gateway, "gpu", engines={"generative": {"stems": ["Drums"],
                                                      "operations": list(TEMPLATES)}})
    body = capabilities(gateway)
    assert list(body["engines"]) == ["generative"] and body["stems"] == ["Drums"]
