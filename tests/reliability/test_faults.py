"""Faults over the real stack (gateway process, Celery worker process with the `tiny` model,
redis-server, SeaweedFS): a Redis restart under load, S3 going away, a crash-looping job, a
non-finite input that reaches a worker directly.

Each test starts its own Redis or SeaweedFS where it stops one, so the session's servers that
other tests share are never touched.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from local_stack import (
    API_KEYS,
    RedisServer,
    S3Server,
    result_and_codes,
    stack_values,
    wait_terminal,
    wait_until,
)
from musicedit.client import ApiError, MusiceditClient
from musicedit.job_store import make_job_store
from musicedit.jobs import EditJob, InputAudio, NormalizedInstruction
from musicedit.queue import enqueue_edit, make_celery
from musicedit.settings import Settings
from musicedit.storage import input_key, make_storage

ALICE = "alice"




@dataclass
class LoadRecord:
    """What a load thread saw: accepted job ids and every refusal (status, Retry-After)."""

    accepted: list[str] = field(default_factory=list)
    refused: list[tuple[float, int, int | None]] = field(default_factory=list)
    transport_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def submit_loop(url: str, api_key: str, clip: bytes, record: LoadRecord, stop: threading.Event,
                max_requests: int, pause: float) -> None:
    """Submit `clip` back to back until `stop` (bounded by `max_requests`)."""
    with MusiceditClient(url, api_key, timeout=15) as client:
        for i in range(max_requests):
            if stop.is_set():
                return
            try:
                job = client.submit(clip, "Add drums", seed=i)
                with record.lock:
                    record.accepted.append(job.id)
            except ApiError as exc:
                with record.lock:
                    record.refused.append((time.monotonic(), exc.status, exc.retry_after))
                time.sleep(0.2)
            except httpx.TransportError:
                with record.lock:
                    record.transport_errors += 1
                time.sleep(0.2)
            time.sleep(pause)


@pytest.mark.slow
def test_redis_restart_under_load_loses_no_accepted_job(
        s3_server, start_worker, start_gateway_process, audio_factory,
        tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis-aof", appendonly=True).start()
    try:
        bucket = s3_server.create_bucket()
        values = stack_values(tmp_path / "var", redis_url=redis.url,
                              s3=(s3_server, bucket), max_batch_size="4",
                              redis_socket_timeout_seconds="0.5",
                              max_queued_jobs_per_key="1000")
        gateway = start_gateway_process(values)
        worker = start_worker(values)
        clip = audio_factory(seconds=1.0, sample_rate=16000, channels=1).read_bytes()
        record, stop = LoadRecord(), threading.Event()
        threads = [threading.Thread(target=submit_loop, args=(
            gateway.url, API_KEYS[name], clip, record, stop, 200, 0.5))
            for name in ("alice", "bob", "alice")]
        for thread in threads:
            thread.start()

        time.sleep(6)
        before_outage = len(record.accepted)
        some_job = record.accepted[0]
        redis.stop()  # SIGTERM: Redis writes the AOF and exits
        down_at = time.monotonic()
        time.sleep(1.5)
        status = httpx.get(f"{gateway.url}/v1/edits/{some_job}",
                           headers={"Authorization": f"Bearer {API_KEYS['alice']}"},
                           timeout=10)
        assert status.status_code == 503 and int(status.headers["retry-after"]) >= 1
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 503
        time.sleep(4)
        redis.start()  # same port and directory: the AOF is replayed
        up_at = time.monotonic()
        wait_until(lambda: len(record.accepted) >= before_outage + 3, 30,
                          "submissions accepted again after the restart")
        recovered_after = time.monotonic() - up_at
        time.sleep(4)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

        accepted = list(record.accepted)
        refused_while_down = [(status, retry) for at, status, retry in record.refused
                              if down_at <= at <= up_at]
        assert refused_while_down, "no submission was refused while Redis was down"
        assert all(status == 503 and retry and retry >= 1 for status, retry in refused_while_down)
        assert {status for _, status, _ in record.refused} <= {503}
        assert recovered_after < 30

        with MusiceditClient(gateway.url, API_KEYS["alice"]) as alice, \
                MusiceditClient(gateway.url, API_KEYS["bob"]) as bob:
            owners = {job.id: alice for job in alice.iter_jobs()}
            owners.update({job.id: bob for job in bob.iter_jobs()})
            assert set(accepted) <= set(owners), "an accepted job is missing from the store"
            views = {}
            deadline = time.monotonic() + 240
            for job_id in accepted:
                views.update(wait_terminal(owners[job_id], [job_id],
                                           max(1.0, deadline - time.monotonic())))
        states = {v.status.value for v in views.values()}
        assert states == {"succeeded"}, {j: (v.status.value, v.error) for j, v in views.items()
                                         if v.status.value != "succeeded"}
        for job_id in accepted:
            assert s3_server.keys(bucket, f"results/{job_id}") == result_and_codes(job_id)
            assert len(worker.events("job_succeeded", job_id)) == 1, job_id
        print(f"\naccepted {len(accepted)} jobs ({before_outage} before the outage), "
              f"{len(refused_while_down)} refused with 503 while Redis was down, "
              f"{record.transport_errors} transport errors, recovered {recovered_after:.1f} s "
              "after the restart; all succeeded once")
    finally:
        redis.stop()


@pytest.mark.slow
def test_s3_outage_uploads_503_worker_retries_then_fails_the_job_and_recovers(
        redis_server, start_worker, start_gateway_process, audio_factory,
        tmp_path: Path) -> None:
    redis_client = redis_server.client()
    redis_client.select(5)
    redis_client.flushdb()
    s3 = S3Server(tmp_path / "seaweedfs").start()
    try:
        bucket = s3.create_bucket()
        values = stack_values(
            tmp_path / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/5",
            s3=(s3, bucket), storage_retries="2", storage_backoff_seconds="0.5")
        gateway = start_gateway_process(values)
        worker = start_worker(values)
        store = make_job_store(Settings(**values))
        client = MusiceditClient(gateway.url, API_KEYS["alice"])
        job = client.submit(audio_factory(seconds=12.0, sample_rate=16000, channels=1),
                            "Remove the bass", seed=3, engine="generative")
        wait_until(lambda: client.get(job.id).progress.frames_done > 0, 60,
                          "the job decoding (its input downloaded)")

        s3.stop()
        stopped_at = time.monotonic()
        with pytest.raises(ApiError) as refused:
            client.submit(audio_factory(seconds=1.0), "Add drums")
        assert refused.value.status == 503 and refused.value.retry_after >= 1
        assert "storage" in refused.value.problem["detail"].lower()
        assert store.count_queued() == 0  # the refused upload left no job behind
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
        assert ready["checks"]["storage"].startswith("unavailable")

        failed = wait_terminal(client, [job.id], timeout=90)[job.id]
        assert time.monotonic() - stopped_at < 90  # nothing hangs
        assert failed.status.value == "failed"
        assert "Object storage was unreachable for 3 attempts (upload_result)" in failed.error
        assert [j.id for j in store.dead_letters()] == [job.id]
        retries = worker.events("storage_retry", job.id)
        assert [(e["operation"], e["delay_seconds"]) for e in retries] == [
            ("upload_result", 0.5), ("upload_result", 1.0)]
        assert len(worker.events("storage_gave_up", job.id)) == 1

        s3.start()  # same ports and data: the gateway and the worker recover by themselves
        wait_until(lambda: httpx.get(f"{gateway.url}/readyz", timeout=5)
                          .json()["checks"]["storage"] == "ok", 30, "storage ready again")
        after = client.submit(audio_factory(seconds=1.0), "Add drums", seed=1)
        assert wait_terminal(client, [after.id], 60)[after.id].status.value == "succeeded"
        assert s3.keys(bucket, f"results/{after.id}") == result_and_codes(after.id)
        client.close()
    finally:
        s3.stop()


@pytest.mark.slow
def test_a_job_that_keeps_killing_workers_is_dead_lettered_after_max_attempts(
        redis_server, s3_server, start_worker, start_gateway_process, audio_factory,
        tmp_path: Path) -> None:
    redis_client = redis_server.client()
    redis_client.select(6)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    values = stack_values(
        tmp_path / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/6",
        s3=(s3_server, bucket), lease_seconds="3", reaper_interval_seconds="1", max_attempts="3")
    gateway = start_gateway_process(values)
    client = MusiceditClient(gateway.url, API_KEYS["alice"])
    job = client.submit(audio_factory(seconds=20.0, sample_rate=16000, channels=1), "Add drums")

    for attempt in (1, 2, 3):  # every worker that runs the job dies (kill -9) while on it
        worker = start_worker(values)
        wait_until(lambda n=attempt: (v := client.get(job.id)).attempts == n
                          and v.status.value == "running", 60, f"attempt {attempt} running")
        worker.kill9()

    survivor = start_worker(values)
    failed = wait_terminal(client, [job.id], timeout=60)[job.id]
    assert failed.status.value == "failed" and failed.attempts == 3
    assert "abandoned by 3 workers" in failed.error and "resubmit" in failed.error
    store = make_job_store(Settings(**values))
    dead = store.dead_letters()
    assert [j.id for j in dead] == [job.id] and dead[0].dead_lettered
    assert survivor.events("job_started", job.id) == []  # not run a fourth time
    assert s3_server.keys(bucket, f"results/{job.id}") == []
    # the queue is not stuck behind it
    after = client.submit(audio_factory(seconds=1.0), "Add drums", seed=1)
    assert wait_terminal(client, [after.id], 60)[after.id].status.value == "succeeded"
    client.close()


@pytest.mark.slow
def test_non_finite_input_that_bypassed_the_gateway_is_refused_by_the_worker(
        redis_server, s3_server, start_worker, start_gateway_process, audio_factory,
        tmp_path: Path) -> None:
    """A NaN float WAV written straight to S3 and queued (as if the gateway's probe had missed
    it) fails with a clear error; the jobs decoding on the same worker succeed. The worker's
    engine refuses it at submission, before it takes a decode slot: it never joins their
    batch and never reaches the model (a job that makes the model raise inside a batch:
    test_model_faults.py, tests/worker/test_edit_job.py, tests/models/test_engine.py)."""
    redis_client = redis_server.client()
    redis_client.select(7)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    values = stack_values(
        tmp_path / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/7",
        s3=(s3_server, bucket), max_batch_size="4")
    settings = Settings(**values)
    gateway = start_gateway_process(values)
    worker = start_worker(values)
    client = MusiceditClient(gateway.url, API_KEYS["alice"])
    good = [client.submit(audio_factory(seconds=6.0, sample_rate=16000, channels=1),
                          "Add drums", seed=i) for i in range(2)]
    wait_until(lambda: all(client.get(j.id).progress.frames_done > 0 for j in good), 60,
                      "the good jobs decoding")

    nan_clip = audio_factory(seconds=2.0, content="nan")
    store, storage = make_job_store(settings), make_storage(settings)
    bad_id = uuid.uuid4().hex
    with nan_clip.open("rb") as source:
        size = storage.put_file(input_key(bad_id), source)
    store.create(EditJob(
        id=bad_id, owner=ALICE,
        instruction=NormalizedInstruction(operation="add", stem="Drums",
                                          text="Music piece. Instruct: Add Drums."),
        params={"seed": 1}, output_format="wav", input_key=input_key(bad_id),
        input=InputAudio(format="WAV", sample_rate=32000, channels=2, duration_seconds=2.0,
                         size_bytes=size)))
    enqueue_edit(make_celery(settings), bad_id)

    views = wait_terminal(client, [bad_id, *(j.id for j in good)], timeout=120)
    assert views[bad_id].status.value == "failed"
    assert "NaN or infinite" in views[bad_id].error
    assert all(views[j.id].status.value == "succeeded" for j in good)
    assert s3_server.keys(bucket, f"results/{bad_id}") == []
    assert len(worker.events("job_failed", bad_id)) == 1
    assert worker.events("job_model_error", bad_id) == []  # refused before the model ran
    assert not store.get(bad_id).dead_lettered  # the input's fault, not the worker's
    client.close()



def test_retry_with_the_same_idempotency_key_re_sends_a_lost_wake_up(
        make_settings, run_gateway, redis_url, redis_server, s3_server, s3_bucket, audio_factory):
    """The store kept the job but its message was lost (Redis failed between the two writes and
    the client got 503): the client's retry with the same Idempotency-Key gets the job (202)
    and the job is queued again, so it cannot sit in `queued` forever."""
    from musicedit.queue import EDIT_QUEUE, queue_depth

    gw = run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket)))
    clip = audio_factory().read_bytes()
    headers = {"Authorization": "Bearer alice-secret-key", "Idempotency-Key": "order-7"}

    def send() -> httpx.Response:
        return httpx.post(f"{gw.url}/v1/edits", headers=headers, data={"instruction": "Add drums"},
                          files={"file": ("a.wav", clip, "audio/wav")}, timeout=30)

    first = send()
    assert first.status_code == 202
    redis_server.client().delete(EDIT_QUEUE)  # the lost message
    assert queue_depth(gw.context.celery) == 0
    again = send()
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert queue_depth(gw.context.celery) == 1
    assert gw.context.storage.list_keys() == [f"inputs/{first.json()['id']}"]
