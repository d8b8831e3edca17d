"""Example bodies for the OpenAPI schema: one job as the API shows it, in its states.

Problem (error) examples live with the error mapping in `service/problems.py`.
"""

from __future__ import annotations

from typing import Any

JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c",
    "status": "queued",
    "instruction": {"operation": "add", "stem": "Drums",
                    "text": "Music piece. Instruct: Add Drums."},
    "params": {"seed": 42, "top_k": 100, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0},
    "output_format": "wav",
    "input": {"format": "WAV", "sample_rate": 44100, "channels": 2, "duration_seconds": 10.0,
              "size_bytes": 1764044},
    "progress": {"frames_done": 0, "frames_total": 0, "fraction": 0.0},
    "queue_position": 0,
    "timings": {"created_at": 1766000000.0, "started_at": None, "finished_at": None},
    "attempts": 0,
    "error": None,
    "cancel_requested": False,
    "webhook_url": None,
    "status_url": "http://127.0.0.1:8000/v1/edits/3f0c2a9e5b7d4c1e8a6f0b2d4e6f8a1c",
    "audio_url": None,
}

SUCCEEDED_EXAMPLE = {
    **JOB_EXAMPLE,
    "id": "9b1d7e3c5a2f4e6d8c0b1a3e5f7d9c2b",
    "status": "succeeded",
    "progress": {"frames_done": 500, "frames_total": 500, "fraction": 1.0},
    "queue_position": None,
    "timings": {"created_at": 1766000000.0, "started_at": 1766000001.5,
                "finished_at": 1766000004.2},
    "attempts": 1,
    "status_url": "http://127.0.0.1:8000/v1/edits/9b1d7e3c5a2f4e6d8c0b1a3e5f7d9c2b",
    "audio_url": "http://127.0.0.1:8000/v1/edits/9b1d7e3c5a2f4e6d8c0b1a3e5f7d9c2b/audio",
}

LIST_EXAMPLE = {"items": [JOB_EXAMPLE, SUCCEEDED_EXAMPLE], "next_cursor": 41}

CANCEL_EXAMPLES = {
    "canceled": {
        "summary": "A queued job, canceled at once",
        "value": {**JOB_EXAMPLE, "status": "canceled", "queue_position": None,
                  "timings": {"created_at": 1766000000.0, "started_at": None,
                              "finished_at": 1766000002.0}},
    },
    "cancel_requested": {
        "summary": "A running job, stopped at the worker's next decode step",
        "value": {**JOB_EXAMPLE, "status": "running", "queue_position": None,
                  "progress": {"frames_done": 120, "frames_total": 500, "fraction": 0.24},
                  "timings": {"created_at": 1766000000.0, "started_at": 1766000001.5,
                              "finished_at": None},
                  "attempts": 1, "cancel_requested": True},
    },
}


WEBHOOK_EXAMPLE = {"event": "edit.succeeded",
                    "job": {**SUCCEEDED_EXAMPLE,
                            "webhook_url": "https://app.example.com/hooks/musicedit"}}
