"""Standalone async load test with `musicedit.client.AsyncMusiceditClient`.

Open-loop arrivals: submissions start on a schedule (linear ramp-up to `--rate` per second,
then constant) whatever the server's latency, for `--duration` seconds; then the script stops
submitting, lets the started jobs finish for at most `--drain-timeout` seconds, cancels the
rest and exits. Two scenarios:

- `gateway`: uploads only (every clip `--clip-seconds` long); measures the gateway and queue.
- `mixed`: uploads drawn from `--mix` (default 5 s, 30 s and 3-minute clips), each job polled
  until it ends, then its result downloaded; measures end-to-end latency too.

Writes `requests.csv` (one row per job), `timeseries.csv` (per second: submissions, errors,
submit latency, queue depth from `/metrics`) and `summary.json` into `--out`, and prints a
table. Only loopback targets are accepted.

    python -m bench.loadtest.run_async --base-url http://127.0.0.1:8000 --api-key KEY \
        --scenario mixed --rate 1 --duration 120 --out bench/loadtest/out/mixed
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.loadtest.common import (
    INSTRUCTIONS,
    fmt_ms,
    fmt_s,
    make_clip,
    parse_metric,
    parse_mix,
    percentile,
    require_loopback,
    table,
)
from musicedit.client import ApiError, AsyncMusiceditClient


@dataclass
class JobRecord:
    """One simulated user job: submit, (poll, download)."""

    started: float  # seconds since the test start
    clip_seconds: float
    submit_status: int = 0
    submit_seconds: float = math.nan
    job_id: str = ""
    final_state: str = ""
    end_to_end_seconds: float = math.nan
    download_seconds: float = math.nan
    polls: int = 0
    error: str = ""


class RawSubmitter:
    """Pre-encoded multipart POSTs over keep-alive asyncio streams (`--raw-submit`).

    The multipart body `AsyncMusiceditClient.submit` sends (without the per-call
    Idempotency-Key the client adds: like a plain curl user), encoded once per clip, so the load
    generator spends ~0.3 ms of CPU per upload instead of httpx's ~10 ms: on a 2-core machine
    that leaves the cores to the gateway whose capacity is being measured.
    """

    def __init__(self, base_url: str, api_keys: list[str], clips: dict[float, bytes],
                 fmt: str) -> None:
        from urllib.parse import urlsplit

        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.requests: dict[tuple[float, str], bytes] = {}
        for seconds, clip in clips.items():
            for key in api_keys:
                boundary = "musicedit-loadtest-boundary"
                body = b"".join([
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"instruction\"\r\n"
                    f"\r\n{random.choice(INSTRUCTIONS)}\r\n".encode(),
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                    f"filename=\"clip.{fmt}\"\r\nContent-Type: application/octet-stream"
                    "\r\n\r\n".encode(), clip, f"\r\n--{boundary}--\r\n".encode()])
                head = (f"POST /v1/edits HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n"
                        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n")
                self.requests[(seconds, key)] = head.encode() + body
        self.keys = api_keys
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def submit(self, seconds: float) -> tuple[int, str]:
        """POST one clip.

        Returns:
            (HTTP status, the job id or the error text).
        """
        request = self.requests[(seconds, random.choice(self.keys))]
        while self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, request)
            except (ConnectionError, EOFError):
                # the server closed this idle keep-alive connection: nothing was processed
                writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, request)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: bytes) -> tuple[int, str]:
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise EOFError("connection closed before the status line")
            status = int(status_line.split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, (json.loads(body)["id"] if status == 202 else body[:200].decode())

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()


@dataclass
class Sample:
    t: float
    queue_depth: float | None
    worker_batch_mean: float | None = None


@dataclass
class LoadTest:
    args: argparse.Namespace
    records: list[JobRecord] = field(default_factory=list)
    clip_bytes: dict[float, int] = field(default_factory=dict)
    raw: RawSubmitter | None = None
    samples: list[Sample] = field(default_factory=list)
    t0: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def one_job(self, client: AsyncMusiceditClient, clip: bytes, seconds: float,
                      record: JobRecord, stop_at: float) -> None:
        started = time.monotonic()
        if self.raw is not None:
            try:
                status, detail = await self.raw.submit(seconds)
            except (OSError, EOFError, ValueError, IndexError) as exc:
                status, detail = 0, type(exc).__name__
            record.submit_seconds = time.monotonic() - started
            record.submit_status = status
            if status == 202:
                record.job_id = detail
            else:
                record.error = f"submit {status or detail}"
            return
        try:
            job = await client.submit(clip, random.choice(INSTRUCTIONS),
                                      seed=random.randrange(1 << 30),
                                      filename=f"clip.{self.args.clip_format}")
            record.submit_seconds = time.monotonic() - started
            record.submit_status = 202
            record.job_id = job.id
        except ApiError as exc:
            record.submit_seconds = time.monotonic() - started
            record.submit_status = exc.status
            record.error = f"submit {exc.status}"
            return
        except httpx.HTTPError as exc:
            record.submit_seconds = time.monotonic() - started
            record.error = f"submit {type(exc).__name__}"
            return
        if self.args.scenario == "gateway":
            return
        try:
            while True:
                await asyncio.sleep(self.args.poll_interval)
                view = await client.get(job.id)
                record.polls += 1
                if view.status.value in ("succeeded", "failed", "canceled"):
                    record.final_state = view.status.value
                    break
                if time.monotonic() > stop_at:
                    await client.cancel(job.id)
                    record.final_state = "unfinished"
                    return
            if record.final_state != "succeeded":
                record.error = f"job {record.final_state}"
                return
            fetch = time.monotonic()
            audio = await client.download(job.id)
            record.download_seconds = time.monotonic() - fetch
            record.end_to_end_seconds = time.monotonic() - started
            if len(audio) < 44:
                record.error = "empty result"
        except (ApiError, httpx.HTTPError) as exc:
            record.error = f"poll/download {getattr(exc, 'status', type(exc).__name__)}"

    async def sample_metrics(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while not stop.is_set():
                depth = batch = None
                try:
                    text = (await http.get(f"{self.args.base_url}/metrics")).text
                    depth = parse_metric(text, "musicedit_queue_size")
                except httpx.HTTPError:
                    pass
                for url in self.args.worker_metrics_url:
                    try:
                        text = (await http.get(url)).text
                    except httpx.HTTPError:
                        continue
                    count = parse_metric(text, "musicedit_batch_size_count") or 0
                    total = parse_metric(text, "musicedit_batch_size_sum") or 0
                    batch = (total / count) if count else batch
                self.samples.append(Sample(self.now(), depth, batch))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except TimeoutError:
                    pass

    def pick_clip(self, clips: dict[float, bytes], mix: list[tuple[float, float]]) -> float:
        return random.choices([s for s, _ in mix], weights=[w for _, w in mix])[0]

    async def run(self) -> None:
        args = self.args
        random.seed(args.seed)
        mix = ([(args.clip_seconds, 1.0)] if args.scenario == "gateway" else parse_mix(args.mix))
        clips = {seconds: make_clip(seconds, args.sample_rate, args.channels, seed=i,
                                    fmt=args.clip_format)
                 for i, (seconds, _) in enumerate(mix)}
        self.clip_bytes = {seconds: len(clip) for seconds, clip in clips.items()}
        if args.raw_submit:
            if args.scenario != "gateway":
                raise SystemExit("--raw-submit is for the gateway scenario (uploads only)")
            self.raw = RawSubmitter(args.base_url, args.api_key.split(","), clips,
                                    args.clip_format)
        limits = httpx.Limits(max_connections=args.max_in_flight,
                              max_keepalive_connections=args.max_in_flight)
        # one client per API key (user), all sharing one connection pool sized to the load
        transport = httpx.AsyncHTTPTransport(limits=limits)
        clients = [AsyncMusiceditClient(args.base_url, key, timeout=args.timeout,
                                        transport=transport)
                   for key in args.api_key.split(",")]
        in_flight = asyncio.Semaphore(args.max_in_flight)
        stop_sampling = asyncio.Event()
        self.t0 = time.monotonic()
        sampler = asyncio.create_task(self.sample_metrics(stop_sampling))
        tasks: list[asyncio.Task] = []
        stop_at = self.t0 + args.duration + args.drain_timeout

        async def guarded(clip: bytes, seconds: float, record: JobRecord) -> None:
            async with in_flight:
                await self.one_job(random.choice(clients), clip, seconds, record, stop_at)

        # arrivals: rate(t) ramps linearly to args.rate over ramp_up, the integral gives times
        next_arrival, started = 0.0, 0
        try:
            while True:
                t = self.now()
                if t >= args.duration:
                    break
                if t >= next_arrival:
                    seconds = self.pick_clip(clips, mix)
                    record = JobRecord(started=t, clip_seconds=seconds)
                    self.records.append(record)
                    tasks.append(asyncio.create_task(guarded(clips[seconds], seconds, record)))
                    started += 1
                    next_arrival = self._arrival_time(started)
                    continue
                await asyncio.sleep(min(0.01, max(0.0, next_arrival - t)))
            if tasks:
                done, pending = await asyncio.wait(
                    tasks, timeout=max(1.0, stop_at - time.monotonic() + 30))
                for task in pending:
                    task.cancel()
        finally:
            stop_sampling.set()
            await sampler
            await transport.aclose()
            if self.raw is not None:
                await self.raw.aclose()

    def _arrival_time(self, n: int) -> float:
        """Time of the n-th arrival for a rate ramping linearly 0 -> r over `ramp` seconds."""
        r, ramp = self.args.rate, self.args.ramp_up
        ramp_jobs = r * ramp / 2
        if ramp > 0 and n <= ramp_jobs:
            return math.sqrt(2 * n * ramp / r)
        return ramp + (n - ramp_jobs) / r

    # --- results -------------------------------------------------------------------
    def summary(self) -> dict[str, object]:
        args = self.args
        recs = self.records
        ok = [r for r in recs if r.submit_status == 202]
        submit = [r.submit_seconds for r in recs if not math.isnan(r.submit_seconds)]
        # throughput = uploads *answered* 202 inside the steady window (after the ramp-up)
        steady = [r for r in ok if args.ramp_up <= r.started + r.submit_seconds <= args.duration]
        steady_span = max(1e-9, args.duration - args.ramp_up)
        errors = [r for r in recs if r.error]
        e2e = [r.end_to_end_seconds for r in recs if not math.isnan(r.end_to_end_seconds)]
        out: dict[str, object] = {
            "scenario": args.scenario,
            "target_rate_per_s": args.rate,
            "duration_s": args.duration,
            "ramp_up_s": args.ramp_up,
            "clip_format": args.clip_format,
            "load_generator": "raw asyncio streams" if args.raw_submit else "AsyncMusiceditClient",
            "clip_bytes": {str(k): v for k, v in self.clip_bytes.items()},
            "jobs_started": len(recs),
            "submits_accepted": len(ok),
            "accepted_per_s_steady": len(steady) / steady_span,
            "submit_p50_s": percentile(submit, 50),
            "submit_p95_s": percentile(submit, 95),
            "submit_p99_s": percentile(submit, 99),
            "errors": len(errors),
            "error_rate": len(errors) / len(recs) if recs else 0.0,
            "error_kinds": _count(r.error for r in errors),
            "queue_depth_max": max((s.queue_depth or 0 for s in self.samples), default=0),
        }
        if args.scenario == "mixed":
            done = [r for r in recs if r.final_state == "succeeded" and not r.error]
            out.update({
                "jobs_succeeded": len(done),
                "jobs_completed_per_min": len(done) / max(1e-9, self.now()) * 60,
                "e2e_p50_s": percentile(e2e, 50),
                "e2e_p95_s": percentile(e2e, 95),
                "e2e_p99_s": percentile(e2e, 99),
                "e2e_by_clip": {
                    str(seconds): {
                        "n": len(vals),
                        "p50_s": percentile(vals, 50),
                        "p95_s": percentile(vals, 95),
                        "p99_s": percentile(vals, 99),
                    }
                    for seconds in sorted({r.clip_seconds for r in recs})
                    for vals in [[r.end_to_end_seconds for r in done
                                  if r.clip_seconds == seconds]]
                },
                "download_p50_s": percentile(
                    [r.download_seconds for r in done if not math.isnan(r.download_seconds)], 50),
                "final_states": _count(r.final_state or "-" for r in recs),
            })
        return out

    def write(self, out_dir: Path) -> dict[str, object]:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "requests.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(asdict(self.records[0]))
                                    if self.records else ["started"])
            writer.writeheader()
            for record in self.records:
                writer.writerow(asdict(record))
        with (out_dir / "timeseries.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t", "queue_depth", "worker_batch_mean"])
            for s in self.samples:
                writer.writerow([f"{s.t:.2f}", "" if s.queue_depth is None else s.queue_depth,
                                 "" if s.worker_batch_mean is None else
                                 f"{s.worker_batch_mean:.2f}"])
        summary = self.summary()
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return summary


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def print_summary(summary: dict[str, object]) -> None:
    rows = [["metric", "value"],
            ["scenario", str(summary["scenario"])],
            ["jobs started / accepted",
             f"{summary['jobs_started']} / {summary['submits_accepted']}"],
            ["accepted uploads/s (after ramp-up)", f"{summary['accepted_per_s_steady']:.1f}"],
            ["submit latency p50/p95/p99 (ms)", " / ".join(
                fmt_ms(float(summary[k]))
                for k in ("submit_p50_s", "submit_p95_s", "submit_p99_s"))],
            ["errors (rate)", f"{summary['errors']} ({float(summary['error_rate']):.2%})"],
            ["max queue depth", f"{summary['queue_depth_max']:.0f}"]]
    if summary["scenario"] == "mixed":
        rows += [["jobs succeeded", str(summary["jobs_succeeded"])],
                 ["end-to-end p50/p95/p99 (s)", " / ".join(
                     fmt_s(float(summary[k])) for k in ("e2e_p50_s", "e2e_p95_s", "e2e_p99_s"))]]
        for clip, stats in summary["e2e_by_clip"].items():
            rows.append([f"  {float(clip):g} s clips: n, e2e p50/p95/p99 (s)",
                         f"{stats['n']}, " + " / ".join(
                             fmt_s(float(stats[k])) for k in ("p50_s", "p95_s", "p99_s"))])
    print(table(rows))
    if summary["errors"]:
        print("error kinds:", summary["error_kinds"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="gateway URL (loopback only)")
    parser.add_argument("--api-key", required=True,
                        help="API key, or several comma-separated (jobs spread over them)")
    parser.add_argument("--scenario", choices=["gateway", "mixed"], default="mixed")
    parser.add_argument("--rate", type=float, default=1.0, help="target submissions per second")
    parser.add_argument("--ramp-up", type=float, default=10.0, help="seconds to reach --rate")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of submissions")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="mixed: seconds after --duration to let started jobs finish")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="gateway scenario clip")
    parser.add_argument("--mix", default="5:0.6,30:0.3,180:0.1",
                        help="mixed scenario: seconds:weight,... of uploaded clips")
    parser.add_argument("--clip-format", choices=["wav", "flac", "mp3", "ogg"], default="wav")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout")
    parser.add_argument("--worker-metrics-url", action="append", default=[],
                        help="worker /metrics URL to sample the batch size (repeatable)")
    parser.add_argument("--raw-submit", action="store_true",
                        help="gateway scenario: send pre-encoded uploads over raw keep-alive "
                        "streams instead of the client (a cheaper load generator)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    return parser


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = build_parser().parse_args(argv)
    require_loopback(args.base_url)
    for url in args.worker_metrics_url:
        require_loopback(url)
    test = LoadTest(args)
    asyncio.run(test.run())
    summary = test.write(args.out)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
