"""The queue settings that let batches form, bring a killed worker's jobs back within 60 s and
never make two results (issue 3; the reasons are in `musicedit/queue.py`)."""

from __future__ import annotations

from musicedit.queue import make_celery
from worker.app import create_worker_app, worker_argv


def test_prefetch_and_concurrency_let_a_worker_hold_one_engine_batch(make_settings, redis_url):
    settings = make_settings(redis_url=redis_url, max_batch_size=6)
    conf = create_worker_app(settings).conf
    assert conf.worker_pool == "threads" and conf.worker_concurrency == 6
    assert conf.worker_prefetch_multiplier == 1  # 6 reserved messages = 6 engine slots
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert "--concurrency=6" in worker_argv(settings)


def test_redis_restore_sweep_and_visibility_timeout_are_explicit(make_settings, redis_url):
    settings = make_settings(redis_url=redis_url)
    options = make_celery(settings).conf.broker_transport_options
    assert options["visibility_timeout"] == settings.broker_visibility_timeout_seconds == 3600
    # kombu's default is a scan every 10th call of a 10 s timer; ours scans every 10 s
    assert options["unacked_restore_interval"] == 10
    assert options["unacked_restore_throttle"] == 1
    # recovery from kill -9 comes from the lease and the reaper, well within 60 s
    assert settings.lease_seconds + settings.reaper_interval_seconds <= 40


def test_the_embedded_broker_gets_no_redis_options(make_settings):
    conf = make_celery(make_settings()).conf
    assert conf.broker_url.startswith("sqla+sqlite:///")
    assert conf.broker_transport_options == {}
