"""Job store semantics, identical on the Redis (real server) and SQLite backends."""

import threading

import pytest

from musicedit.errors import (
    IdempotencyConflict,
    JobNotCancelable,
    JobNotFound,
    LeaseLost,
    RateLimited,
    TooManyQueuedJobs,
)
from musicedit.job_store import BaseJobStore, RedisJobStore, SqliteJobStore
from musicedit.jobs import JobState


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["redis", "sqlite"])
def store(request, clock, tmp_path) -> BaseJobStore:
    if request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        s = RedisJobStore(redis.Redis.from_url(url), retention_seconds=3600, max_attempts=3,
                          clock=clock)
    else:
        s = SqliteJobStore(tmp_path / "jobs.sqlite", retention_seconds=3600, max_attempts=3,
                           clock=clock)
    yield s
    s.close()


def test_create_get_and_owner_scoping(store, new_job):
    job, created = store.create(new_job("alice"))
    assert created and job.state is JobState.queued and job.seq > 0
    assert store.get(job.id, "alice").id == job.id
    with pytest.raises(JobNotFound):
        store.get(job.id, "bob")
    with pytest.raises(JobNotFound):
        store.get("missing", "alice")


def test_idempotency_same_body_same_job_other_body_conflict(store, new_job):
    first, created = store.create(new_job(idempotency_key="k1", request_hash="h1"))
    again, created_again = store.create(new_job(idempotency_key="k1", request_hash="h1"))
    assert created and not created_again and again.id == first.id
    assert store.find_idempotent("alice", "k1", "h1").id == first.id
    with pytest.raises(IdempotencyConflict):
        store.create(new_job(idempotency_key="k1", request_hash="h2"))
    with pytest.raises(IdempotencyConflict):
        store.find_idempotent("alice", "k1", "h2")
    # keys are per owner
    other, created_other = store.create(new_job("bob", idempotency_key="k1", request_hash="h2"))
    assert created_other and other.id != first.id
    assert store.count_queued() == 2


def test_fifo_queue_position_and_per_owner_counts(store, new_job):
    jobs = [store.create(new_job("alice" if i % 2 else "bob"))[0] for i in range(4)]
    assert [store.queue_position(j.id) for j in jobs] == [0, 1, 2, 3]
    assert store.count_queued("alice") == 2 and store.count_queued("bob") == 2
    assert store.claim(jobs[0].id, "w1", 30) is not None
    assert [store.queue_position(j.id) for j in jobs] == [None, 0, 1, 2]
    assert store.count_queued() == 3


def test_queued_cap_per_owner(store, new_job):
    store.create(new_job("alice"), max_queued_per_owner=2)
    store.create(new_job("alice"), max_queued_per_owner=2)
    with pytest.raises(TooManyQueuedJobs) as info:
        store.create(new_job("alice"), max_queued_per_owner=2)
    assert info.value.retry_after >= 1
    store.create(new_job("bob"), max_queued_per_owner=2)


def test_list_is_newest_first_and_paginated(store, new_job):
    ids = [store.create(new_job("alice"))[0].id for _ in range(5)]
    store.create(new_job("bob"))
    page1 = store.list_jobs("alice", limit=2)
    assert [j.id for j in page1] == ids[::-1][:2]
    page2 = store.list_jobs("alice", limit=2, before=page1[-1].seq)
    assert [j.id for j in page2] == ids[::-1][2:4]
    page3 = store.list_jobs("alice", limit=2, before=page2[-1].seq)
    assert [j.id for j in page3] == ids[:1]


def test_claim_lease_complete_exactly_once(store, new_job):
    job, _ = store.create(new_job())
    claimed = store.claim(job.id, "w1", 30)
    assert claimed.state is JobState.running and claimed.attempts == 1
    assert claimed.lease.worker_id == "w1"
    # a redelivered message while the lease is live: nobody else may run it
    assert store.claim(job.id, "w2", 30) is None
    assert store.claim(job.id, "w1", 30) is None
    store.update_progress(job.id, "w1", 10, 100)
    assert store.get(job.id).progress.frames_done == 10
    with pytest.raises(LeaseLost):
        store.complete(job.id, "w2", "results/x.wav")
    done = store.complete(job.id, "w1", f"results/{job.id}.wav")
    assert done.state is JobState.succeeded and done.result_key == f"results/{job.id}.wav"
    assert done.timings.finished_at is not None and done.lease is None
    with pytest.raises(LeaseLost):
        store.complete(job.id, "w1", "results/other.wav")
    assert store.claim(job.id, "w3", 30) is None  # terminal
    assert store.get(job.id).result_key == f"results/{job.id}.wav"


def test_expired_lease_is_reclaimed_and_old_holder_is_fenced(store, clock, new_job):
    job, _ = store.create(new_job())
    store.claim(job.id, "w1", 30)
    clock.advance(10)
    store.renew_lease(job.id, "w1", 30)
    clock.advance(29)
    assert store.expired_leases() == []
    clock.advance(2)
    assert store.expired_leases() == [job.id]
    again = store.claim(job.id, "w2", 30)
    assert again.attempts == 2 and again.lease.worker_id == "w2"
    assert store.expired_leases() == []
    with pytest.raises(LeaseLost):  # the presumed-dead worker comes back: fenced off
        store.complete(job.id, "w1", "results/late.wav")
    with pytest.raises(LeaseLost):
        store.renew_lease(job.id, "w1", 30)
    assert store.complete(job.id, "w2", "results/ok.wav").result_key == "results/ok.wav"


def test_crash_looping_job_is_dead_lettered_after_max_attempts(store, clock, new_job):
    job, _ = store.create(new_job())
    for worker in ("w1", "w2", "w3"):
        assert store.claim(job.id, worker, 30) is not None
        clock.advance(31)
    assert store.claim(job.id, "w4", 30) is None
    failed = store.get(job.id)
    assert failed.state is JobState.failed and failed.dead_lettered
    assert "abandoned by 3 workers" in failed.error
    assert [j.id for j in store.dead_letters()] == [job.id]


def test_fail_with_dead_letter_and_release(store, new_job):
    a, _ = store.create(new_job())
    b, _ = store.create(new_job())
    store.claim(a.id, "w1", 30)
    failed = store.fail(a.id, "w1", "model raised: non-finite logits", dead_letter=True)
    assert failed.state is JobState.failed and failed.error.startswith("model raised")
    assert [j.id for j in store.dead_letters()] == [a.id]
    store.claim(b.id, "w1", 30)
    released = store.release(b.id, "w1")
    assert released.state is JobState.queued and released.attempts == 0
    assert store.queue_position(b.id) == 0
    assert store.claim(b.id, "w2", 30).attempts == 1


def test_cancel_queued_running_and_terminal(store, new_job):
    queued, _ = store.create(new_job("alice"))
    running, _ = store.create(new_job("alice"))
    store.claim(running.id, "w1", 30)
    with pytest.raises(JobNotFound):
        store.request_cancel(queued.id, "bob")
    canceled = store.request_cancel(queued.id, "alice")
    assert canceled.state is JobState.canceled and store.count_queued() == 0
    assert store.claim(queued.id, "w1", 30) is None
    flagged = store.request_cancel(running.id, "alice")
    assert flagged.state is JobState.running and flagged.cancel_requested
    assert store.renew_lease(running.id, "w1", 30).cancel_requested
    assert store.acknowledge_cancel(running.id, "w1").state is JobState.canceled
    with pytest.raises(JobNotCancelable):
        store.request_cancel(running.id, "alice")


def test_complete_after_cancel_request_records_no_result(store, new_job):
    job, _ = store.create(new_job())
    store.claim(job.id, "w1", 30)
    store.request_cancel(job.id)
    finished = store.complete(job.id, "w1", "results/x.wav")
    assert finished.state is JobState.canceled and finished.result_key is None


def test_retention_lists_expired_jobs_until_they_are_removed(store, clock, new_job):
    done, _ = store.create(new_job(idempotency_key="k", request_hash="h"))
    store.claim(done.id, "w1", 30)
    store.complete(done.id, "w1", f"results/{done.id}.wav")
    clock.advance(1)
    failed, _ = store.create(new_job())
    store.claim(failed.id, "w1", 30)
    store.fail(failed.id, "w1", "model raised", dead_letter=True)
    pending, _ = store.create(new_job())
    clock.advance(3598)
    assert store.expired_jobs() == []
    clock.advance(3)
    expired = store.expired_jobs()
    assert [j.id for j in expired] == [done.id, failed.id]
    assert expired[0].result_key == f"results/{done.id}.wav"
    # listing deletes nothing: the sweeper deletes the objects first, then the record
    assert [j.id for j in store.expired_jobs(limit=1)] == [done.id]
    assert store.get(done.id).state is JobState.succeeded
    store.remove_expired(done.id)
    store.remove_expired(failed.id)
    store.remove_expired(failed.id)  # a second sweeper's removal is harmless
    assert store.expired_jobs() == [] and store.dead_letters() == []
    with pytest.raises(JobNotFound):
        store.get(done.id)
    assert [j.id for j in store.list_jobs("alice")] == [pending.id]
    store.remove_expired(pending.id)  # only finished jobs are ever removed
    assert store.get(pending.id).state is JobState.queued


def test_rate_limit_is_a_sliding_window(store, clock):
    """At most `limit` admitted submissions in any 60 s: a burst that straddles a minute
    boundary is refused too (the CI flake of a fixed window), refused requests spend no
    quota, and Retry-After is when the oldest admitted one leaves the window."""
    clock.now = 1_800_000_000.0 - (1_800_000_000.0 % 60) + 59.5  # just before a boundary
    for _ in range(2):
        store.admit("alice", 3, max_queued=100)
    clock.advance(1.0)  # the next minute on the wall clock
    store.admit("alice", 3, max_queued=100)
    with pytest.raises(RateLimited, match="more than 3 submissions in the last minute") as info:
        store.admit("alice", 3, max_queued=100)
    assert info.value.retry_after == 59  # the first two leave the window 59 s from now
    store.admit("bob", 3, max_queued=100)  # per key
    for _ in range(5):  # refusals are not logged: they do not push the wait further out
        with pytest.raises(RateLimited):
            store.admit("alice", 3, max_queued=100)
    clock.advance(58.9)
    with pytest.raises(RateLimited) as info:
        store.admit("alice", 3, max_queued=100)
    assert info.value.retry_after == 1
    clock.advance(0.2)  # both early ones are out; the third is still in
    store.admit("alice", 3, max_queued=100)
    store.admit("alice", 3, max_queued=100)
    with pytest.raises(RateLimited) as info:
        store.admit("alice", 3, max_queued=100)
    assert info.value.retry_after == 1  # the third, admitted at +60.0, leaves at +120.0


def test_admit_counts_the_rate_limit_then_checks_the_queued_cap(store, clock, new_job):
    store.admit("alice", 3, max_queued=1)
    store.create(new_job("alice"))
    with pytest.raises(TooManyQueuedJobs, match=r"already has 1 queued jobs \(limit 1\)"):
        store.admit("alice", 3, max_queued=1)  # second submission this minute, cap reached
    clock.advance(10)
    store.admit("alice", 3, max_queued=2)  # third
    with pytest.raises(RateLimited, match="more than 3 submissions") as info:
        store.admit("alice", 3, max_queued=0)  # the rate limit is checked first
    assert info.value.retry_after == 50
    store.admit("bob", 3, max_queued=1)  # per key
    clock.advance(50)
    store.admit("alice", 3, max_queued=2)


def test_admit_counts_retries_of_a_used_idempotency_key_apart(store, clock, new_job):
    """A retry of the job that filled the queued cap, or used the minute's last submission,
    is not refused: the gateway answers it with that job (or 409 for another body). Retries
    have a rate window of their own with the same limit: each is an upload to read."""
    assert store.admit("alice", 2, max_queued=1, idempotency_key="k1") is False
    store.create(new_job("alice", idempotency_key="k1", request_hash="h1"))
    for _ in range(2):  # cap reached, yet retries are admitted, up to the limit
        assert store.admit("alice", 2, max_queued=1, idempotency_key="k1") is True
    with pytest.raises(RateLimited):  # a third retry in the minute is one too many
        store.admit("alice", 2, max_queued=1, idempotency_key="k1")
    with pytest.raises(TooManyQueuedJobs):  # a new key is a new submission: capped
        store.admit("alice", 2, max_queued=1, idempotency_key="k2")
    with pytest.raises(RateLimited):  # and counted: the retries spent none of this quota
        store.admit("alice", 2, max_queued=5)
    assert store.admit("bob", 2, max_queued=1, idempotency_key="k1") is False  # per owner
    clock.advance(60)  # a minute later: retries are admitted again
    assert store.admit("alice", 2, max_queued=1, idempotency_key="k1") is True


def test_count_by_state_counts_queued_and_running_jobs(store, new_job):
    jobs = [store.create(new_job())[0] for _ in range(3)]
    assert store.count_by_state() == {JobState.queued: 3, JobState.running: 0}
    store.claim(jobs[0].id, "w1", 30)
    store.claim(jobs[1].id, "w1", 30)
    store.complete(jobs[1].id, "w1", "results/x.wav")
    assert store.count_by_state() == {JobState.queued: 1, JobState.running: 1}


def test_create_with_position_reads_the_position_in_the_same_call(store, new_job):
    first = store.create_with_position(new_job("alice"))
    second = store.create_with_position(new_job("bob", idempotency_key="k", request_hash="h"))
    assert (first.created, first.queue_position) == (True, 0)
    assert (second.created, second.queue_position) == (True, 1)
    assert store.get(second.job.id).seq == second.job.seq > first.job.seq
    assert store.queue_position(second.job.id) == 1
    replay = store.create_with_position(new_job("bob", idempotency_key="k", request_hash="h"))
    assert (replay.job.id, replay.created, replay.queue_position) == (second.job.id, False, 1)
    store.claim(second.job.id, "w1", 30)
    replay = store.create_with_position(new_job("bob", idempotency_key="k", request_hash="h"))
    assert replay.job.state is JobState.running and replay.queue_position is None
    with pytest.raises(IdempotencyConflict):
        store.create_with_position(new_job("bob", idempotency_key="k", request_hash="other"))
    with pytest.raises(TooManyQueuedJobs, match=r"already has 1 queued jobs \(limit 1\)"):
        store.create_with_position(new_job("alice"), max_queued_per_owner=1)
    assert [j.id for j in store.list_jobs("alice")] == [first.job.id]


def test_worker_heartbeats(store, clock):
    store.register_worker_heartbeat("w1", {"host": "gpu-1", "max_batch_size": 8})
    assert [w["worker_id"] for w in store.live_workers(30)] == ["w1"]
    clock.advance(31)
    assert store.live_workers(30) == []


def test_discard_removes_job_and_idempotency_record(store, new_job):
    job, _ = store.create(new_job(idempotency_key="k", request_hash="h"))
    store.discard(job.id)
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert store.count_queued() == 0
    assert store.find_idempotent("alice", "k", "other") is None


def test_concurrent_claims_have_one_winner(store, new_job):
    jobs = [store.create(new_job())[0] for _ in range(20)]
    winners: dict[str, list[str]] = {j.id: [] for j in jobs}
    lock = threading.Lock()

    def worker(name: str) -> None:
        for job in jobs:
            if store.claim(job.id, name, 30) is not None:
                with lock:
                    winners[job.id].append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(names) == 1 for names in winners.values())


def test_dead_letters_outlive_the_retention_of_other_jobs(store, clock, new_job):
    store.dead_letter_retention_seconds = 7 * 86400  # MUSICEDIT_DEAD_LETTER_RETENTION_SECONDS
    done, _ = store.create(new_job())
    store.claim(done.id, "w1", 30)
    store.complete(done.id, "w1", "results/x.wav")
    dead, _ = store.create(new_job())
    store.claim(dead.id, "w1", 30)
    store.fail(dead.id, "w1", "model raised", dead_letter=True)
    plain, _ = store.create(new_job())
    store.claim(plain.id, "w1", 30)
    store.fail(plain.id, "w1", "bad input")  # an ordinary failure: ordinary retention
    clock.advance(3601)
    assert {j.id for j in store.expired_jobs()} == {done.id, plain.id}
    store.remove_expired(done.id)
    store.remove_expired(plain.id)
    assert [j.id for j in store.dead_letters()] == [dead.id]
    clock.advance(7 * 86400 - 3600)
    assert [j.id for j in store.expired_jobs()] == [dead.id]
    store.remove_expired(dead.id)
    assert store.dead_letters() == [] and store.expired_jobs() == []


def test_requeue_dead_letter_makes_it_a_fresh_queued_job(store, clock, new_job):
    job, _ = store.create(new_job())
    other, _ = store.create(new_job())
    for attempt in range(3):  # three workers died holding it
        assert store.claim(job.id, f"w{attempt}", 30) is not None
        clock.advance(31)
    dead = store.claim_or_finish(job.id, "w3", 30).finished
    assert dead.dead_lettered and dead.state is JobState.failed and dead.attempts == 3
    with pytest.raises(JobNotFound, match="No dead letter"):
        store.requeue_dead_letter(other.id)  # only dead letters
    requeued = store.requeue_dead_letter(job.id)
    assert requeued.state is JobState.queued and requeued.attempts == 0
    assert requeued.error is None and not requeued.dead_lettered
    assert requeued.timings.finished_at is None and requeued.timings.started_at is None
    assert store.get(job.id) == requeued
    assert store.dead_letters() == []
    assert store.queue_position(job.id) == 0  # its old place, ahead of the later job
    assert store.count_queued("alice") == 2
    clock.advance(10 * 86400)
    assert store.expired_jobs() == []  # in no retention index while queued
    running = store.claim(job.id, "w9", 30)
    assert running is not None and running.attempts == 1
    assert store.complete(job.id, "w9", "results/y.wav").state is JobState.succeeded
    with pytest.raises(JobNotFound):
        store.requeue_dead_letter(job.id)
