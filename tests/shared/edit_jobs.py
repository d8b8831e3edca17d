"""The one way the shared-package tests make an `EditJob` record (not submitted through the
gateway): the job store, retention and dead-letter tests all build the same kind of job."""

from __future__ import annotations

import uuid

from musicedit.jobs import EditJob, InputAudio, NormalizedInstruction


def new_job(owner: str = "alice", idempotency_key: str | None = None,
            request_hash: str | None = None, job_id: str | None = None,
            size_bytes: int = 64000) -> EditJob:
    """A queued "Add drums" job of a 1 s WAV input stored at `inputs/{id}`."""
    job_id = job_id or uuid.uuid4().hex
    return EditJob(
        id=job_id,
        owner=owner,
        instruction=NormalizedInstruction(operation="add", stem="Drums",
                                          text="Music piece. Instruct: Add Drums."),
        input_key=f"inputs/{job_id}",
        input=InputAudio(format="WAV", sample_rate=32000, channels=1, duration_seconds=1.0,
                         size_bytes=size_bytes),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
