"""Retention deletes expired jobs together with their objects in real S3."""

import io

import pytest
import redis

from musicedit.errors import JobNotFound
from musicedit.job_store import RedisJobStore
from musicedit.jobs import EditJob
from musicedit.retention import sweep_expired
from musicedit.storage import S3Storage


@pytest.fixture
def clock():
    return [1_800_000_000.0]


@pytest.fixture
def store(redis_url, clock):
    return RedisJobStore(redis.Redis.from_url(redis_url), retention_seconds=60, max_attempts=3,
                         clock=lambda: clock[0])


@pytest.fixture
def storage(make_settings, s3_server, s3_bucket):
    return S3Storage.from_settings(make_settings(s3=(s3_server, s3_bucket)))


def stored_job(store, storage, job_id: str, new_job) -> EditJob:
    job = new_job(job_id=job_id, size_bytes=3)
    store.create(job)
    storage.put_file(job.input_key, io.BytesIO(b"in"))
    return job


def succeed(store, storage, job_id: str) -> None:
    store.claim(job_id, "w1", 30)
    storage.put_file(f"results/{job_id}.wav", io.BytesIO(b"out"))
    store.complete(job_id, "w1", f"results/{job_id}.wav")


def test_sweep_deletes_expired_jobs_and_their_objects(store, storage, clock, new_job):
    stored_job(store, storage, "job0", new_job)
    stored_job(store, storage, "job1", new_job)
    succeed(store, storage, "job0")
    clock[0] += 61
    assert sweep_expired(store, storage) == 2
    assert storage.list_keys() == ["inputs/job1"]  # the unfinished job keeps its input
    assert [j.id for j in store.list_jobs("alice")] == ["job1"]


def test_a_failed_object_delete_keeps_the_job_for_the_next_sweep(
        store, storage, clock, make_settings, s3_server, s3_bucket, new_job):
    """The record names the objects: it goes only after they did, so a storage failure
    orphans nothing and a later sweep deletes both."""
    stored_job(store, storage, "job0", new_job)
    succeed(store, storage, "job0")
    clock[0] += 61
    refused = S3Storage.from_settings(make_settings(  # the S3 server refuses these requests
        s3=(s3_server, s3_bucket), s3_secret_access_key="not-the-secret"))

    assert sweep_expired(store, refused) == 0

    assert storage.list_keys() == ["inputs/job0", "results/job0.wav"]
    assert store.get("job0").result_key == "results/job0.wav"  # still findable
    assert [j.id for j in store.expired_jobs()] == ["job0"]

    assert sweep_expired(store, storage) == 2  # storage is back: objects, then the record
    assert storage.list_keys() == []
    with pytest.raises(JobNotFound):
        store.get("job0")
    assert store.expired_jobs() == [] and store.list_jobs("alice") == []
    assert sweep_expired(store, storage) == 0
