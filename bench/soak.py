"""Soak: mixed load on a local stack of real processes while workers are killed and Redis restarts.

Run by hand (not in CI); it starts everything itself on free loopback ports and stops by itself:

    .venv/bin/python -m bench.soak                      # 10 min of load, then drain
    .venv/bin/python -m bench.soak --minutes 2 --kill-every 40 --redis-restart-at 60   # smoke run

The stack (`local_stack.LocalStack`): redis-server with AOF (fsync always; job store +
Celery broker), SeaweedFS `weed mini` (S3), the gateway (uvicorn, its own process), and two
Celery workers
(`musicedit worker`, `tiny` model, CPU): worker A runs the whole time, worker B is killed with
SIGKILL and restarted every `--kill-every` seconds. Redis is restarted once (SIGTERM, down
for `--redis-down` seconds, same port and AOF).

Load (`--clients` threads, the project's `MusiceditClient`, loopback only, each loop bounded in
count and time): submit clips of 1-4 s with random instructions, output formats and seeds,
each with an Idempotency-Key that is retried after 503/429/transport errors; poll status; list;
cancel about 5 % of submissions; download finished results. After `--minutes` the clients stop
submitting and every accepted job (202) is waited for, up to `--drain-seconds`.

Printed: jobs submitted (accepted with 202), completed, failed, canceled, lost (accepted but
missing from the store or not finished after the drain: must be 0), results recorded twice
(must be 0), refusals (503/429) and transport errors seen by clients, and the resident memory of
the gateway and of worker A at the start and at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from local_stack import API_KEYS, SMALL_LIMITS, LocalStack, RedisServer, WorkerProcess
from musicedit.client import ApiError, MusiceditClient

INSTRUCTIONS = ["Add drums", "Remove the bass", "Only piano", "add guitar", "no drums",
                "extract bass", "Music piece. Instruct: Add Piano."]
TERMINAL = {"succeeded", "failed", "canceled"}
MiB = 1024 * 1024


def write_clips(directory: Path) -> list[bytes]:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    clips = []
    for i, seconds in enumerate((1.0, 2.0, 3.0, 4.0)):
        path = directory / f"clip-{i}.wav"
        data = (rng.standard_normal((int(seconds * 16000), 1)) * 0.1).astype("float32")
        sf.write(str(path), data, 16000)
        clips.append(path.read_bytes())
    return clips


@dataclass
class Tally:
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> key name
    canceled_by_client: set[str] = field(default_factory=set)
    refusals: Counter = field(default_factory=Counter)
    transport_errors: int = 0
    downloads: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(url: str, key_name: str, api_key: str, clips: list[bytes], tally: Tally,
                deadline: float, seed: int, max_iterations: int = 100_000) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    with MusiceditClient(url, api_key, timeout=30) as client:
        for _ in range(max_iterations):
            if time.monotonic() >= deadline:
                return
            action = rng.random()
            try:
                if action < 0.45:
                    submit_with_retries(client, key_name, rng, clips, tally, mine, deadline)
                elif action < 0.75 and mine:
                    view = client.get(rng.choice(mine))
                    if view.status.value == "succeeded" and rng.random() < 0.3:
                        client.download(view.id)
                        with tally.lock:
                            tally.downloads += 1
                elif action < 0.85:
                    client.list(limit=20)
                elif action < 0.88 and mine:
                    job_id = rng.choice(mine)
                    try:
                        client.cancel(job_id)
                        with tally.lock:
                            tally.canceled_by_client.add(job_id)
                    except ApiError as exc:
                        if exc.status != 409:  # already finished: fine
                            raise
                with tally.lock:
                    tally.requests += 1
            except ApiError as exc:
                with tally.lock:
                    tally.refusals[exc.status] += 1
                time.sleep(min(exc.retry_after or 1, 5))
            except httpx.TransportError:
                with tally.lock:
                    tally.transport_errors += 1
                time.sleep(1)
            time.sleep(rng.uniform(0.2, 0.8))


def submit_with_retries(client: MusiceditClient, key_name: str, rng: random.Random,
                        clips: list[bytes], tally: Tally, mine: list[str],
                        deadline: float) -> None:
    """One submission; retried with the same Idempotency-Key until accepted or the deadline."""
    idempotency_key = uuid.uuid4().hex
    clip = rng.choice(clips)
    params = dict(seed=rng.randrange(10**6), output_format=rng.choice(["wav", "flac"]),
                  idempotency_key=idempotency_key)
    instruction = rng.choice(INSTRUCTIONS)
    for _ in range(60):
        try:
            job = client.submit(clip, instruction, **params)
        except ApiError as exc:
            if exc.status not in (429, 503):
                raise
            with tally.lock:
                tally.refusals[exc.status] += 1
            time.sleep(min(exc.retry_after or 1, 5))
        except httpx.TransportError:
            with tally.lock:
                tally.transport_errors += 1
            time.sleep(1)
        else:
            with tally.lock:
                tally.accepted[job.id] = key_name
            mine.append(job.id)
            return
        if time.monotonic() >= deadline:
            return


def chaos_loop(stop: threading.Event, started: float, args: argparse.Namespace,
               worker_b: WorkerProcess, redis: RedisServer, log: list[str]) -> None:
    next_kill = started + args.kill_every
    redis_at = started + args.redis_restart_at
    restarted_redis = False
    while not stop.wait(0.5):
        now = time.monotonic()
        if now >= next_kill:
            worker_b.kill9()
            log.append(f"{now - started:6.0f} s  kill -9 worker B (pid {worker_b.pid})")
            worker_b.start()
            log.append(f"{time.monotonic() - started:6.0f} s  worker B restarted "
                       f"(pid {worker_b.pid})")
            next_kill += args.kill_every
        if not restarted_redis and now >= redis_at:
            redis.stop()
            log.append(f"{now - started:6.0f} s  redis-server stopped (SIGTERM)")
            time.sleep(args.redis_down)
            redis.start()
            log.append(f"{time.monotonic() - started:6.0f} s  redis-server started (AOF replayed)")
            restarted_redis = True


def drain(url: str, tally: Tally, timeout: float) -> dict[str, dict[str, Any]]:
    """Final state of every accepted job (None if the store does not know it)."""
    clients = {name: MusiceditClient(url, secret, timeout=30)
               for name, secret in API_KEYS.items()}
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    pending = dict(tally.accepted)
    try:
        while pending and time.monotonic() < deadline:
            for job_id, name in list(pending.items()):
                try:
                    view = clients[name].get(job_id)
                except ApiError as exc:
                    if exc.status == 404:
                        final[job_id] = {"status": "missing"}
                        pending.pop(job_id)
                    continue
                except httpx.TransportError:
                    continue
                if view.status.value in TERMINAL:
                    final[job_id] = {"status": view.status.value, "error": view.error,
                                     "attempts": view.attempts,
                                     "seconds": (view.timings.finished_at or 0)
                                     - view.timings.created_at}
                    pending.pop(job_id)
            time.sleep(1)
        for job_id in pending:
            final[job_id] = {"status": "unfinished"}
    finally:
        for client in clients.values():
            client.close()
    return final


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--kill-every", type=float, default=120.0,
                        help="seconds between kill -9 of worker B")
    parser.add_argument("--redis-restart-at", type=float, default=300.0,
                        help="seconds into the load when Redis is restarted (once)")
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down")
    parser.add_argument("--drain-seconds", type=float, default=300.0,
                        help="how long to wait for accepted jobs after the load")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="musicedit-soak-"))
    print(f"soak: working directory {root}", flush=True)
    from models.presets import resolve_model

    resolve_model("tiny", root / "models")  # written once, before two workers read it
    stack = LocalStack(
        root, limits={**SMALL_LIMITS, "max_queued_jobs_per_key": 200,
                      "rate_limit_per_minute": 10000},
        overrides={"max_batch_size": 4, "model_cache_dir": root / "models",
                   "job_retention_seconds": 86400, "log_level": "INFO"},
        redis_appendonly=True, access_log=True)
    try:
        stack.start()
        gateway = stack.gateway
        worker_a = stack.start_worker("worker-a")
        worker_b = stack.start_worker("worker-b")
        clips = write_clips(root)
        with MusiceditClient(gateway.url, API_KEYS["alice"]) as warmup:
            warmup.wait(warmup.submit(clips[0], "Add drums", seed=0).id, timeout=120)
        rss_start = {"gateway": gateway.rss(), "worker A": worker_a.rss(),
                     "worker B": worker_b.rss()}

        tally, chaos_log, stop = Tally(), [], threading.Event()
        started = time.monotonic()
        deadline = started + args.minutes * 60
        chaos = threading.Thread(target=chaos_loop,
                                 args=(stop, started, args, worker_b, stack.redis, chaos_log))
        chaos.start()
        names = list(API_KEYS)
        clients = [threading.Thread(target=client_loop, args=(
            gateway.url, names[i % len(names)], API_KEYS[names[i % len(names)]],
            clips, tally, deadline, i)) for i in range(args.clients)]
        for thread in clients:
            thread.start()
        next_report = started + 30
        while any(t.is_alive() for t in clients):
            time.sleep(0.5)
            if time.monotonic() < next_report:
                continue
            next_report += 30
            with tally.lock:
                print(f"soak: {time.monotonic() - started:5.0f} s, {len(tally.accepted)} "
                      f"accepted, refusals {dict(tally.refusals)}, transport errors "
                      f"{tally.transport_errors}", flush=True)
        stop.set()
        chaos.join()
        load_seconds = time.monotonic() - started

        final = drain(gateway.url, tally, args.drain_seconds)
        rss_end = {"gateway": gateway.rss(), "worker A": worker_a.rss(),
                   "worker B": worker_b.rss()}
        succeeded_events = Counter(
            e["job_id"] for w in (worker_a, worker_b) for e in w.events("job_succeeded"))
        states = Counter(v["status"] for v in final.values())
        lost = states["missing"] + states["unfinished"]
        twice = sum(1 for job_id in final if succeeded_events[job_id] > 1)
        durations = sorted(v["seconds"] for v in final.values() if v["status"] == "succeeded")
        retried = sum(1 for v in final.values() if v.get("attempts", 0) > 1)
        errors = Counter(v["error"][:90] for v in final.values() if v["status"] == "failed")

        print("\nchaos:")
        for line in chaos_log:
            print(f"  {line}")
        print(f"\n| soak: {args.minutes:g} min of load ({load_seconds:.0f} s), {args.clients} "
              f"clients, worker B kill -9 every {args.kill_every:g} s, one Redis restart | |")
        print("|---|---|")
        rows = [
            ("jobs submitted (202)", len(final)),
            ("completed (succeeded)", states["succeeded"]),
            ("failed", states["failed"]),
            ("canceled (by the clients)", states["canceled"]),
            ("**lost** (accepted, then missing or unfinished)", lost),
            ("results recorded twice", twice),
            ("jobs that ran more than once (taken over after a kill)", retried),
            ("other requests (status, list, cancel, download)", tally.requests),
            ("refusals seen by clients (status: count)", dict(sorted(tally.refusals.items()))),
            ("transport errors seen by clients", tally.transport_errors),
            ("submit -> succeeded p50 / p95 (s)",
             f"{pct(durations, 50):.1f} / {pct(durations, 95):.1f}" if durations else "-"),
        ]
        for name in ("gateway", "worker A", "worker B"):
            note = " (restarted at every kill)" if name == "worker B" else ""
            rows.append((f"{name} RSS start -> end (MiB){note}",
                         f"{rss_start[name] / MiB:.0f} -> {rss_end[name] / MiB:.0f}"))
        for name, value in rows:
            print(f"| {name} | {value} |")
        if errors:
            print("\nfailure reasons:", dict(errors))
        print(f"\nlogs: {root}")
        return 0 if lost == 0 and twice == 0 else 1
    finally:
        stack.stop()


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


if __name__ == "__main__":
    sys.exit(main())
