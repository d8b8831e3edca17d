"""`musicedit dead-letters` (cli/dead_letters.py): the operator's view of jobs failed for
good, run as the console script against real Redis (job store and broker) and SeaweedFS S3."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from local_stack import child_env, stack_values
from musicedit.errors import JobNotFound
from musicedit.job_store import make_job_store
from musicedit.jobs import EditJob, JobState
from musicedit.queue import make_celery, queue_depth
from musicedit.settings import Settings
from musicedit.storage import make_storage

SCRIPT = Path(sys.executable).with_name("musicedit")


@pytest.fixture
def services(redis_url, s3_server, s3_bucket, tmp_path, _no_musicedit_env):
    # redis_url is flushed for this test: the broker's queue holds only its messages
    values = stack_values(tmp_path / "var", redis_url=redis_url, s3=(s3_server, s3_bucket))
    settings = Settings(**values)
    store = make_job_store(settings)
    yield settings, store, make_storage(settings), child_env(values)
    store.close()


def cli(env, *args):
    return subprocess.run([str(SCRIPT), "dead-letters", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def failed_job(store, storage, *, dead: bool, new_job) -> EditJob:
    job = new_job(size_bytes=3)
    job_id = job.id
    store.create(job)
    storage.put_file(job.input_key, io.BytesIO(b"in"))
    store.claim(job_id, "w1", 30)
    return store.fail(job_id, "w1", "The model failed on this input (NonFiniteLogits)",
                      dead_letter=dead)


def test_list_show_requeue_and_purge_dead_letters(services, new_job):
    settings, store, storage, env = services
    dead = failed_job(store, storage, dead=True, new_job=new_job)
    plain = failed_job(store, storage, dead=False, new_job=new_job)

    listed = cli(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "1 dead letter(s) (kept 7 days" in listed.stdout
    assert dead.id in listed.stdout and "NonFiniteLogits" in listed.stdout
    assert plain.id not in listed.stdout
    records = json.loads(cli(env, "list", "--json").stdout)
    assert [r["id"] for r in records] == [dead.id] and records[0]["dead_lettered"] is True

    shown = cli(env, "show", dead.id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["input_key"] == dead.input_key
    refused = cli(env, "show", plain.id)
    assert refused.returncode == 2 and "not a dead letter" in refused.stderr
    assert cli(env, "show", "nope").returncode == 2

    assert queue_depth(make_celery(settings)) == 0
    requeued = cli(env, "requeue", dead.id)
    assert requeued.returncode == 0, requeued.stderr
    job = store.get(dead.id)
    assert job.state is JobState.queued and job.attempts == 0 and not job.dead_lettered
    assert queue_depth(make_celery(settings)) == 1  # its wake-up message is in the queue
    assert json.loads(cli(env, "list", "--json").stdout) == []

    store.claim(dead.id, "w2", 30)  # it fails for good again: purge it
    store.fail(dead.id, "w2", "again", dead_letter=True)
    purged = cli(env, "purge", dead.id)
    assert purged.returncode == 0, purged.stderr
    assert not storage.exists(dead.input_key)
    with pytest.raises(JobNotFound):
        store.get(dead.id)
    assert storage.exists(plain.input_key)  # only the dead letter went


def test_requeue_refuses_a_dead_letter_whose_input_is_gone(services, new_job):
    _, store, storage, env = services
    dead = failed_job(store, storage, dead=True, new_job=new_job)
    storage.delete(dead.input_key)
    refused = cli(env, "requeue", dead.id)
    assert refused.returncode == 2 and "is gone" in refused.stderr
    assert store.get(dead.id).dead_lettered
