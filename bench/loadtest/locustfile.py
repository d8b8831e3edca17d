"""Locust load test: users upload 5 s / 30 s / 3-minute clips, poll their jobs, download results.

Run headless against a loopback gateway (`make loadtest` does it for you):

    .venv/bin/locust -f bench/loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \
        --api-key KEY --csv var/loadtest/locust --target-users 8 --ramp-up 20 --hold 60

The shape ramps up to `--target-users` over `--ramp-up` seconds, holds for `--hold` seconds
and stops the test by itself. Only loopback hosts are accepted.
"""

from __future__ import annotations

import random
import time

from locust import HttpUser, LoadTestShape, between, events, task

from bench.loadtest.common import INSTRUCTIONS, make_clip, parse_mix, require_loopback

_CLIPS: dict[float, bytes] = {}


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--api-key", default="", help="musicedit API key (Bearer)")
    parser.add_argument("--mix", default="5:0.6,30:0.3,180:0.1",
                        help="seconds:weight,... of uploaded clips")
    parser.add_argument("--clip-format", choices=["wav", "flac", "mp3", "ogg"], default="wav")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--target-users", type=int, default=8)
    parser.add_argument("--ramp-up", type=float, default=20.0)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--job-timeout", type=float, default=300.0,
                        help="give up polling (and cancel) after this many seconds")


@events.init.add_listener
def _init(environment, **_) -> None:
    options = environment.parsed_options
    if options is None:
        return
    require_loopback(environment.host or "")
    if not options.api_key:
        raise SystemExit("--api-key is required")
    for index, (seconds, _) in enumerate(parse_mix(options.mix)):
        _CLIPS[seconds] = make_clip(seconds, options.sample_rate, options.channels, seed=index,
                                    fmt=options.clip_format)


class EditUser(HttpUser):
    """One user: submit a clip, poll until it ends, download the result, think, repeat."""

    wait_time = between(1, 3)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        self.mix = parse_mix(options.mix)
        self.poll_seconds = 1.0
        self.job_timeout = options.job_timeout

    @task
    def edit(self) -> None:
        options = self.environment.parsed_options
        seconds = random.choices([s for s, _ in self.mix], weights=[w for _, w in self.mix])[0]
        started = time.monotonic()
        with self.client.post(
            "/v1/edits",
            files={"file": (f"clip.{options.clip_format}", _CLIPS[seconds],
                            "application/octet-stream")},
            data={"instruction": random.choice(INSTRUCTIONS),
                  "seed": str(random.randrange(1 << 30))},
            name=f"POST /v1/edits [{seconds:g} s clip]",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            job_id = response.json()["id"]
        state = "queued"
        while state not in ("succeeded", "failed", "canceled"):
            if time.monotonic() - started > self.job_timeout:
                self.client.delete(f"/v1/edits/{job_id}", name="DELETE /v1/edits/{id}")
                self._report("end-to-end timeout", started, seconds, "timeout")
                return
            time.sleep(self.poll_seconds)
            response = self.client.get(f"/v1/edits/{job_id}", name="GET /v1/edits/{id}")
            if response.status_code != 200:
                return
            state = response.json()["status"]
        if state != "succeeded":
            self._report("job", started, seconds, f"job {state}")
            return
        with self.client.get(f"/v1/edits/{job_id}/audio", name="GET /v1/edits/{id}/audio",
                             allow_redirects=False, catch_response=True) as redirect:
            if redirect.status_code not in (200, 302, 307):
                redirect.failure(f"{redirect.status_code}")
                return
            redirect.success()
        if redirect.status_code != 200:
            # the presigned URL carries its own signature: do not send the API key to S3
            with self.client.get(redirect.headers["Location"], headers={"Authorization": None},
                                 name="GET presigned result", catch_response=True) as audio:
                if audio.status_code != 200 or len(audio.content) < 44:
                    audio.failure(f"{audio.status_code}")
                    return
        self._report("end-to-end", started, seconds, None)

    def _report(self, kind: str, started: float, seconds: float, error: str | None) -> None:
        """End-to-end latency as its own locust entry (submit -> polled -> downloaded)."""
        self.environment.events.request.fire(
            request_type="E2E", name=f"{kind} [{seconds:g} s clip]",
            response_time=(time.monotonic() - started) * 1000, response_length=0,
            exception=RuntimeError(error) if error else None, context={})


class RampHoldStop(LoadTestShape):
    """Linear ramp to --target-users over --ramp-up s, hold for --hold s, then stop."""

    def tick(self):
        options = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        if elapsed > options.ramp_up + options.hold:
            return None
        users = options.target_users
        if elapsed < options.ramp_up:
            users = max(1, round(options.target_users * elapsed / options.ramp_up))
        return users, max(1.0, options.target_users / max(options.ramp_up, 1.0))
