"""Many concurrent event streams against one gateway process: its memory and threads.

Starts `redis-server` and the gateway in its own process (uvicorn, httptools, uvloop, as in
production) on loopback ports, submits `--jobs` clips, then, from one asyncio client:

1. opens `--streams` streams spread over the jobs and waits for each one's first event;
2. holds them `--hold` seconds while a stand-in worker moves every job's progress (so events
   flow) and idle streams send heartbeats;
3. completes the jobs: every stream must get its `end` event and close;
4. does it all again (a second round shows whether anything leaked).

It prints the gateway's resident memory and thread count at each stage.

    .venv/bin/python -m bench.event_streams --streams 200
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.loadtest.common import make_clip
from local_stack import API_KEYS, GatewayProcess, RedisServer, stack_values
from musicedit.event_stream import EventStreamReader
from musicedit.job_store import make_job_store
from musicedit.settings import Settings
from musicedit.storage import make_storage, result_key

KEY = API_KEYS["alice"]
WORKER = "bench-worker"


@dataclass
class Sample:
    stage: str
    rss_mb: float
    threads: int


@dataclass
class StreamRun:
    streams: int
    jobs: int
    samples: list[Sample] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)      # streams that got their end, per round
    events: list[int] = field(default_factory=list)    # events received, per round

    def rss(self, stage: str) -> float:
        return next(s.rss_mb for s in self.samples if s.stage == stage)

    def threads(self, stage: str) -> int:
        return next(s.threads for s in self.samples if s.stage == stage)

    def table(self) -> str:
        rows = ["| stage | gateway RSS (MB) | gateway threads |", "|---|---|---|"]
        rows += [f"| {s.stage} | {s.rss_mb:.1f} | {s.threads} |" for s in self.samples]
        return "\n".join(rows)


def _usage(pid: int) -> tuple[float, int]:
    import psutil  # a test and benchmark tool (requirements/dev.txt)

    process = psutil.Process(pid)
    return process.memory_info().rss / 2**20, process.num_threads()


async def _one_round(url: str, job_ids: list[str], streams: int, opened: threading.Event,
                     counts: dict[str, int]) -> None:
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits,
                                 timeout=httpx.Timeout(30, read=60)) as http:
        first = asyncio.Semaphore(0)

        async def follow(job_id: str) -> None:
            reader = EventStreamReader()
            announced = False
            async with http.stream("GET", f"{url}/v1/edits/{job_id}/events") as response:
                async for line in response.aiter_lines():
                    event = reader.feed(line)
                    if event is None:
                        continue
                    counts["events"] += 1
                    if not announced:
                        announced = True
                        first.release()
                    if event.event == "end":
                        counts["ends"] += 1

        tasks = [asyncio.create_task(follow(job_ids[i % len(job_ids)]))
                 for i in range(streams)]
        for _ in range(streams):
            await first.acquire()
        opened.set()
        await asyncio.gather(*tasks)


def run(directory: Path, streams: int = 200, jobs: int = 40, hold: float = 5.0,
        rounds: int = 2) -> StreamRun:
    """Measure `rounds` rounds of `streams` streams over `jobs` jobs (see the module doc)."""
    redis = RedisServer(directory / "redis").start()
    values = stack_values(directory / "var", redis_url=redis.url, limits={},
                          rate_limit_per_minute=10_000, max_queued_jobs_per_key=10_000,
                          events_poll_interval_seconds=0.25, events_heartbeat_seconds=1.0)
    gateway = GatewayProcess(values, directory / "gateway.log", access_log=False).start()
    settings = Settings(**values)  # type: ignore[arg-type]
    store, storage = make_job_store(settings), make_storage(settings)
    result = StreamRun(streams, jobs)
    clip = make_clip(1.0, sample_rate=32000, channels=1)
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
            result.samples.append(Sample("started", *_usage(gateway.pid)))
            for round_index in range(1, rounds + 1):
                job_ids = [http.post(f"{gateway.url}/v1/edits", data={"instruction": "Add drums"},
                                     files={"file": clip}).json()["id"] for _ in range(jobs)]
                result.samples.append(Sample(f"round {round_index}: {jobs} jobs queued",
                                             *_usage(gateway.pid)))
                counts = {"events": 0, "ends": 0}
                opened = threading.Event()
                thread = threading.Thread(target=asyncio.run, args=(_one_round(
                    gateway.url, job_ids, streams, opened, counts),))
                thread.start()
                opened.wait(timeout=120)
                result.samples.append(Sample(f"round {round_index}: {streams} streams open",
                                             *_usage(gateway.pid)))
                for job_id in job_ids:
                    store.claim(job_id, WORKER, 300)
                deadline = time.monotonic() + hold
                step = 0
                while time.monotonic() < deadline:
                    step += 1
                    for job_id in job_ids:
                        store.update_progress(job_id, WORKER, step, 1000)
                    time.sleep(0.25)
                result.samples.append(Sample(f"round {round_index}: after {hold:g} s of "
                                             "progress", *_usage(gateway.pid)))
                for job_id in job_ids:
                    key = result_key(job_id, "wav")
                    storage.put_file(key, io.BytesIO(b"RIFF"))
                    store.complete(job_id, WORKER, key)
                thread.join(timeout=60)
                time.sleep(1.0)
                result.samples.append(Sample(f"round {round_index}: all streams ended",
                                             *_usage(gateway.pid)))
                result.events.append(counts["events"])
                result.ends.append(counts["ends"])
    finally:
        gateway.stop()
        redis.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--hold", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="musicedit-streams-") as tmp:
        result = run(Path(tmp), args.streams, args.jobs, args.hold)
    print(result.table())
    print(f"ends per round: {result.ends} of {args.streams}; events per round: {result.events}")


if __name__ == "__main__":
    main()
