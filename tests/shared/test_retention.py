"""Retention deletes expired jobs together with their objects in real S3."""

import io

import redis

from musicedit.job_store import RedisJobStore
from musicedit.jobs import EditJob, InputAudio, NormalizedInstruction
from musicedit.retention import sweep_expired
from musicedit.storage import S3Storage


def test_sweep_deletes_expired_jobs_and_their_objects(make_settings, redis_url, s3_server,
                                                      s3_bucket):
    now = [1_800_000_000.0]
    store = RedisJobStore(redis.Redis.from_url(redis_url), retention_seconds=60, max_attempts=3,
                          clock=lambda: now[0])
    storage = S3Storage.from_settings(make_settings(s3=(s3_server, s3_bucket)))
    ids = []
    for n in range(2):
        job = EditJob(
            id=f"job{n}", owner="alice",
            instruction=NormalizedInstruction(operation="add", stem="Drums",
                                              text="Music piece. Instruct: Add Drums."),
            input_key=f"inputs/job{n}",
            input=InputAudio(format="WAV", sample_rate=32000, channels=1, duration_seconds=1.0,
                             size_bytes=3),
        )
        store.create(job)
        storage.put_file(job.input_key, io.BytesIO(b"in"))
        ids.append(job.id)
    store.claim("job0", "w1", 30)
    storage.put_file("results/job0.wav", io.BytesIO(b"out"))
    store.complete("job0", "w1", "results/job0.wav")
    now[0] += 61
    assert sweep_expired(store, storage) == 2
    assert storage.list_keys() == ["inputs/job1"]  # the unfinished job keeps its input
    assert [j.id for j in store.list_jobs("alice")] == ["job1"]
