"""`make loadtest`: start a local stack of real processes, load-test it, stop everything.

1. Redis, SeaweedFS S3 and the gateway (uvicorn) start on free loopback ports.
2. Gateway phase, workers stopped: for each rate in `--gateway-rates`, `run_async` uploads
   10 s clips at that rate (open loop) for `--gateway-duration` seconds. Target: >= 100
   uploads/s with p99 submit latency < 300 ms and no errors.
3. The queue is emptied (FLUSHDB) and Celery workers with the `tiny` model start.
4. End-to-end phase: `run_async --scenario mixed` (5 s / 30 s / 3-minute uploads, polling,
   downloads), then the locust file headless with the same mix.
5. Workers, gateway, S3 and Redis are stopped; a results table (`results.md`) and a plot
   (`loadtest.png`) are written to `--out`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadtest import plot, run_async
from bench.loadtest.common import fmt_ms, fmt_s, table
from local_stack import LocalStack

# The service's own limits (100 MiB uploads, 300 s inputs) except the per-key caps.
GENEROUS_LIMITS = {
    "rate_limit_per_minute": 1_000_000,
    "max_queued_jobs_per_key": 1_000_000,
    "max_input_seconds": 300,
}
API_KEY = "loadtest-secret"
CLIENT_KEYS = 16  # distinct API keys (users) the load tests spread their jobs over


def api_keys(count: int = CLIENT_KEYS) -> list[str]:
    """The secrets of the stack's API keys: `API_KEY`, then `loadtest-secret-1`, ..."""
    return [API_KEY] + [f"{API_KEY}-{index}" for index in range(1, count)]


class ProcessCpu:
    """CPU time of the stack's processes (and this load generator) over one phase."""

    def __init__(self, stack: LocalStack) -> None:
        import psutil

        self.psutil = psutil
        self.stack = stack
        self.before: dict[str, float] = {}
        self.t0 = 0.0

    def _sample(self) -> dict[str, float]:
        system = self.psutil.cpu_times()
        out: dict[str, float] = {"machine": sum(system) - system.idle - system.iowait}
        own = self.psutil.Process()
        times = own.cpu_times()
        out["load generator"] = times.user + times.system
        for name, process in self.stack.processes.items():
            total = 0.0
            try:
                proc = self.psutil.Process(process.pid)
                for member in [proc, *proc.children(recursive=True)]:
                    t = member.cpu_times()
                    total += t.user + t.system
            except self.psutil.Error:
                pass
            out[name] = total
        return out

    def start(self) -> None:
        self.before, self.t0 = self._sample(), time.monotonic()

    def stop(self) -> dict[str, float]:
        after, elapsed = self._sample(), time.monotonic() - self.t0
        return {name: round((after[name] - self.before.get(name, 0.0)) / elapsed, 2)
                for name in after}


def gateway_row(name: str, summary: dict) -> list[str]:
    ok = (summary["target_rate_per_s"] >= 100 and summary["errors"] == 0
          and summary["accepted_per_s_steady"] >= 0.98 * summary["target_rate_per_s"]
          and summary["submit_p99_s"] < 0.300)
    cpu = summary.get("cpu_cores", {})
    clip_kb = max(summary.get("clip_bytes", {"": 0}).values()) / 1000
    return [name, f"{clip_kb:.0f}", f"{summary['target_rate_per_s']:g}",
            f"{summary['accepted_per_s_steady']:.1f}",
            fmt_ms(summary["submit_p50_s"]), fmt_ms(summary["submit_p95_s"]),
            fmt_ms(summary["submit_p99_s"]), f"{summary['error_rate']:.2%}",
            f"{summary['queue_depth_max']:.0f}",
            " / ".join(f"{cpu.get(k, 0):.2f}" for k in ("gateway", "s3", "redis",
                                                          "load generator")),
            f"{cpu.get('machine', 0) - sum(v for k, v in cpu.items() if k != 'machine'):.2f}",
            "yes" if ok else "no"]


def mixed_rows(summary: dict) -> list[list[str]]:
    rows = [["all", str(summary["jobs_started"]), str(summary["jobs_succeeded"]),
             fmt_ms(summary["submit_p50_s"]), fmt_ms(summary["submit_p99_s"]),
             fmt_s(summary["e2e_p50_s"]), fmt_s(summary["e2e_p95_s"]),
             fmt_s(summary["e2e_p99_s"]), f"{summary['error_rate']:.2%}"]]
    for clip, stats in summary["e2e_by_clip"].items():
        rows.append([f"{float(clip):g} s clips", "", str(stats["n"]), "", "",
                     fmt_s(stats["p50_s"]), fmt_s(stats["p95_s"]), fmt_s(stats["p99_s"]), ""])
    return rows


def locust_rows(stats_csv: Path) -> list[list[str]]:
    import csv

    rows = []
    with stats_csv.open() as handle:
        for row in csv.DictReader(handle):
            if not row["Name"] or row["Name"] == "Aggregated":
                continue
            # locust reports milliseconds
            rows.append([row["Type"], row["Name"], row["Request Count"], row["Failure Count"],
                         row["50%"], row["95%"], row["99%"]])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/loadtest"))
    parser.add_argument("--gateway-rates", default="50,100",
                        help="uploads/s for the gateway phase, comma-separated")
    parser.add_argument("--gateway-duration", type=float, default=30.0)
    parser.add_argument("--client-rate", type=float, default=100.0,
                        help="one more gateway run at this rate with AsyncMusiceditClient as "
                        "the load generator (first clip); 0 skips it")
    parser.add_argument("--gateway-ramp-up", type=float, default=5.0)
    parser.add_argument("--gateway-processes", type=int, default=2,
                        help="uvicorn worker processes of the gateway")
    parser.add_argument("--gateway-clips", default="wav/32000/1,mp3/44100/2",
                        help="10 s clips of the gateway phase, format/rate/channels, "
                        "comma-separated (WAV 32 kHz mono = the model's own format; MP3 "
                        "44.1 kHz stereo = a typical user upload)")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--mixed-rate", type=float, default=0.5)
    parser.add_argument("--mixed-duration", type=float, default=60.0)
    parser.add_argument("--mixed-drain", type=float, default=300.0)
    parser.add_argument("--mix", default="5:0.6,30:0.3,180:0.1")
    parser.add_argument("--locust-users", type=int, default=4)
    parser.add_argument("--locust-hold", type=float, default=60.0)
    parser.add_argument("--api-keys", type=int, default=16,
                        help="distinct API keys (users) the jobs are spread over")
    parser.add_argument("--skip-e2e", action="store_true", help="gateway phase only")
    args = parser.parse_args(argv)
    keys = ",".join(api_keys()[:args.api_keys])

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="musicedit-loadtest-"))
    stack = LocalStack(
        workdir, api_keys={f"loadtest-{index}": secret for index, secret in enumerate(api_keys())},
        limits=GENEROUS_LIMITS, gateway_processes=args.gateway_processes,
        overrides={"log_level": "WARNING", "retention_sweep_interval_seconds": 3600})
    gateway_runs: list[tuple[str, dict]] = []
    mixed: dict | None = None
    locust_csv: Path | None = None
    started = time.monotonic()
    try:
        stack.start()
        print(f"stack up: gateway {stack.base_url}, redis {stack.redis_url}, "
              f"S3 {stack.s3_endpoint_url} (logs in {workdir})", flush=True)
        cpu = ProcessCpu(stack)
        plan = [(clip, rate, "raw") for clip in args.gateway_clips.split(",") if clip
                for rate in [float(r) for r in args.gateway_rates.split(",") if r]]
        if args.client_rate:
            plan.append((args.gateway_clips.split(",")[0], args.client_rate, "client"))
        import redis

        for clip, rate, generator in plan:
            redis.Redis.from_url(stack.redis_url).flushdb()  # each run starts with no queue
            fmt, sample_rate, channels = clip.split("/")
            name = f"gateway-{fmt}{int(sample_rate) // 1000}k{channels}ch-{rate:g}-{generator}"
            print(f"\n== gateway phase: {rate:g} uploads/s of 10 s {fmt} clips ({sample_rate} "
                  f"Hz, {channels} ch), {generator} load generator, workers stopped ==",
                  flush=True)
            cpu.start()
            summary = run_async.main([
                "--base-url", stack.base_url, "--api-key", keys,
                "--scenario", "gateway", "--rate", str(rate),
                "--ramp-up", str(args.gateway_ramp_up),
                "--duration", str(args.gateway_duration), "--clip-seconds", "10",
                "--clip-format", fmt, "--sample-rate", sample_rate,
                "--channels", channels, "--out", str(out / name),
                *(["--raw-submit"] if generator == "raw" else [])])
            summary["cpu_cores"] = cpu.stop()
            print("CPU cores used:", summary["cpu_cores"], flush=True)
            gateway_runs.append((name, summary))
        # the gateway phase left thousands of queued jobs: workers must not inherit them
        redis.Redis.from_url(stack.redis_url).flushdb()
        if not args.skip_e2e:
            print(f"\n== starting {args.workers} worker(s), tiny model, batch "
                  f"{args.max_batch_size} ==", flush=True)
            stack.start_workers(args.workers, max_batch_size=args.max_batch_size)
            worker_urls = [f"http://127.0.0.1:{worker.metrics_port}/metrics"
                           for worker in stack.workers]
            print("\n== end-to-end phase (run_async, mixed clips) ==", flush=True)
            mixed = run_async.main([
                "--base-url", stack.base_url, "--api-key", keys, "--scenario", "mixed",
                "--rate", str(args.mixed_rate), "--ramp-up", "10",
                "--duration", str(args.mixed_duration), "--drain-timeout", str(args.mixed_drain),
                "--mix", args.mix, "--out", str(out / "mixed"),
                *[arg for url in worker_urls for arg in ("--worker-metrics-url", url)]])
            print("\n== end-to-end phase (locust, headless) ==", flush=True)
            locust_csv = out / "locust"
            subprocess.run([
                sys.executable, "-m", "locust", "-f",
                str(Path(__file__).with_name("locustfile.py")), "--headless",
                "--host", stack.base_url, "--api-key", API_KEY, "--mix", args.mix,
                "--target-users", str(args.locust_users), "--ramp-up", "10",
                "--hold", str(args.locust_hold), "--csv", str(locust_csv),
                "--only-summary", "--loglevel", "WARNING",
            ], check=False, timeout=args.locust_hold + 600,
                cwd=Path(__file__).resolve().parents[2])
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [f"# musicedit load test ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{time.monotonic() - started:.0f} s)", ""]
    if gateway_runs:
        lines += [f"Gateway + queue, workers stopped: 10 s clips, raw = pre-encoded uploads over "
                  "keep-alive sockets (cheap load generator), client = AsyncMusiceditClient, "
                  f"{args.gateway_processes} gateway process(es), {args.gateway_duration:g} s "
                  f"per run including a {args.gateway_ramp_up:g} s ramp-up; accepted/s counts "
                  "202 answers after the ramp-up. CPU = cores used by gateway / SeaweedFS / "
                  "Redis / load generator; other CPU = cores busy with anything else on the "
                  "machine during the run (2 cores in all).",
                  "", table([["run", "clip kB", "target/s", "accepted/s", "submit p50 ms",
                              "p95 ms", "p99 ms", "errors", "max queue", "CPU cores",
                              "other CPU", "meets target"]]
                             + [gateway_row(n, s) for n, s in gateway_runs]), ""]
    if mixed is not None:
        lines += [f"End to end with {args.workers} worker(s) (tiny model, CPU, batch "
                  f"{args.max_batch_size}): run_async, {args.mixed_rate:g} jobs/s for "
                  f"{args.mixed_duration:g} s, mix {args.mix} (seconds:weight).", "",
                  table([["clips", "jobs", "succeeded", "submit p50 ms", "submit p99 ms",
                          "e2e p50 s", "e2e p95 s", "e2e p99 s", "errors"]]
                        + mixed_rows(mixed)), ""]
    if locust_csv is not None and (out / "locust_stats.csv").exists():
        lines += [f"Locust, {args.locust_users} users, same mix (latencies in ms):", "",
                  table([["type", "name", "requests", "failures", "p50 ms", "p95 ms", "p99 ms"]]
                        + locust_rows(out / "locust_stats.csv")), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    # the plot: each clip's raw run at the highest rate, then the end-to-end run
    top = max((s["target_rate_per_s"] for _, s in gateway_runs), default=0)
    runs = [out / name for name, s in gateway_runs
            if s["target_rate_per_s"] == top and name.endswith("-raw")]
    runs += [out / "mixed"] if mixed else []
    if runs:
        plot.plot(runs, out / "loadtest.png")
        print(f"plot: {out / 'loadtest.png'}")
    (out / "summary.json").write_text(json.dumps(
        {"gateway": dict(gateway_runs), "mixed": mixed}, indent=2, default=str) + "\n")
    if gateway_runs:
        met = [n for n, s in gateway_runs if gateway_row(n, s)[-1] == "yes"]
        print("gateway target (>= 100 uploads/s, p99 < 300 ms, no errors): "
              + (f"met by {', '.join(met)}" if met else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
