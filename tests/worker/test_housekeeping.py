"""Lease reaper and shutdown signal against a real SQLite job store."""

from __future__ import annotations

from musicedit.job_store import SqliteJobStore
from musicedit.jobs import EditJob, InputAudio, InstructionStep, JobState, NormalizedInstruction
from worker.housekeeping import LeaseReaper, ShutdownSignal


def make_job(job_id: str) -> EditJob:
    return EditJob(
        id=job_id, owner="alice",
        instruction=NormalizedInstruction(operation="add", stem="Drums",
                                          text="Music piece. Instruct: Add Drums."),
        input_key=f"inputs/{job_id}",
        input=InputAudio(format="WAV", sample_rate=32000, channels=1, duration_seconds=1.0,
                         size_bytes=64044),
    )


def test_reaper_requeues_a_dead_workers_job_once_and_the_next_claim_takes_it_over(tmp_path):
    now = [1000.0]
    store = SqliteJobStore(tmp_path / "jobs.sqlite", retention_seconds=3600, max_attempts=3,
                           clock=lambda: now[0])
    for job_id in ("held", "dead"):
        store.create(make_job(job_id))
        store.claim(job_id, "worker-a" if job_id == "held" else "worker-killed", 30)
    requeued: list[str] = []
    reaper = LeaseReaper(store, requeued.append, lease_seconds=30, clock=lambda: now[0])

    assert reaper.run_once() == []
    store.renew_lease("held", "worker-a", 30)
    now[0] += 20
    store.renew_lease("held", "worker-a", 30)  # a live worker keeps renewing
    now[0] += 15  # worker-killed stopped renewing 35 s ago

    assert reaper.run_once() == ["dead"]
    assert reaper.run_once() == []  # no flood of wake-ups while the job waits for a slot
    now[0] += 31
    store.renew_lease("held", "worker-a", 30)
    assert reaper.run_once() == ["dead"]  # still not picked up: wake someone again
    assert requeued == ["dead", "dead"]

    taken = store.claim("dead", "worker-b", 30)
    assert taken is not None and taken.attempts == 2 and taken.lease.worker_id == "worker-b"
    assert store.claim("dead", "worker-c", 30) is None  # the duplicate wake-up does nothing
    assert store.get("held").state is JobState.running


def test_shutdown_signal_gives_running_jobs_their_grace_period():
    now = [0.0]
    shutdown = ShutdownSignal(clock=lambda: now[0])
    assert not shutdown.requested and not shutdown.grace_expired()
    shutdown.begin(grace_seconds=20)
    shutdown.begin(grace_seconds=0)  # a second SIGTERM does not shorten the first grace
    now[0] = 19.9
    assert shutdown.requested and not shutdown.grace_expired()
    now[0] = 20.0
    assert shutdown.grace_expired()


def test_reaper_resends_lost_wake_ups_only_when_the_broker_queue_is_empty(tmp_path):
    """A broker outage can lose the message of a job the store still holds as queued; with an
    empty queue the reaper wakes a worker for it (once per lease period)."""
    now = [5000.0]
    store = SqliteJobStore(tmp_path / "jobs.sqlite", retention_seconds=3600, max_attempts=3,
                           clock=lambda: now[0])
    store.create(make_job("lost"))
    store.create(make_job("young"))
    store.create(make_job("running"))
    store.claim("running", "worker-a", 30)
    depth = [3]
    requeued: list[str] = []
    created = max(j.timings.created_at for j in store.oldest_queued())
    reaper = LeaseReaper(store, requeued.append, lease_seconds=30, clock=lambda: now[0],
                         queue_depth=lambda queue: depth[0],
                         wall_clock=lambda: created + now[0] - 5000.0)

    now[0] += 31
    store.renew_lease("running", "worker-a", 30)
    assert reaper.run_once() == []          # messages still waiting: nothing is lost
    depth[0] = 0
    assert set(reaper.run_once()) == {"lost", "young"}  # queued > 1 lease, queue empty
    assert reaper.run_once() == []          # not again within a lease period
    store.claim("lost", "worker-b", 30)
    store.claim("young", "worker-b", 30)
    now[0] += 31
    store.renew_lease("running", "worker-a", 30)
    store.renew_lease("lost", "worker-b", 30)
    store.renew_lease("young", "worker-b", 30)
    assert reaper.run_once() == []          # running jobs are the lease logic's business
    assert requeued == ["lost", "young"]


def test_lost_wake_ups_are_resent_per_queue(tmp_path):
    """A separation job is woken when the separation queue is empty, however long the edit
    queue is (and the other way round)."""
    from musicedit.queue import EDIT_QUEUE, SEPARATION_QUEUE

    store = SqliteJobStore(tmp_path / "jobs.sqlite", retention_seconds=3600, max_attempts=3)
    store.create(make_job("generative"))
    separation = make_job("separation").model_copy(update={"instruction": NormalizedInstruction(
        operation="remove", stem="Vocals", text="Music piece. Instruct: No Vocals.",
        steps=[InstructionStep(operation="remove", stem="Vocals", engine="separation",
                               text="Music piece. Instruct: No Vocals.")])})
    store.create(separation)
    depths = {EDIT_QUEUE: 5, SEPARATION_QUEUE: 0}
    requeued: list[str] = []
    created = max(j.timings.created_at for j in store.oldest_queued())
    reaper = LeaseReaper(store, requeued.append, lease_seconds=30,
                         queue_depth=depths.__getitem__, wall_clock=lambda: created + 31)
    assert reaper.run_once() == ["separation"]
    depths.update({EDIT_QUEUE: 0, SEPARATION_QUEUE: 3})
    reaper._recent.clear()
    assert reaper.run_once() == ["generative"]
