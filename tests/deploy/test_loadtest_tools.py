"""The load-test tools: loopback-only targets, a schedule that ends by itself, real outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
from deploy_files import REPO


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://192.168.0.10",
                                 "http://8.8.8.8", "http://[2001:db8::1]:80"])
def test_non_loopback_targets_are_refused(url):
    from bench.loadtest.common import require_loopback

    with pytest.raises(SystemExit, match="only loopback"):
        require_loopback(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:9"])
def test_loopback_targets_are_accepted(url):
    from bench.loadtest.common import require_loopback

    require_loopback(url)


def test_locust_refuses_a_non_loopback_host():
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "bench/loadtest/locustfile.py", "--headless",
         "--host", "http://10.1.2.3:8000", "--api-key", "x", "--hold", "1", "--ramp-up", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode != 0
    assert "only loopback" in result.stdout + result.stderr


def test_arrival_schedule_ramps_then_holds():
    import argparse

    from bench.loadtest.run_async import LoadTest

    test = LoadTest(argparse.Namespace(rate=10.0, ramp_up=4.0))
    times = [test._arrival_time(n) for n in range(1, 200)]
    assert times == sorted(times)
    in_ramp = sum(t <= 4.0 for t in times)
    assert in_ramp == 20  # half the steady rate on average over the ramp
    steady = [b - a for a, b in zip(times[30:-1], times[31:], strict=True)]
    assert all(abs(gap - 0.1) < 1e-9 for gap in steady)


def test_gateway_and_mixed_scenarios_end_by_themselves(make_settings, run_gateway, tmp_path):
    """A short run against a real gateway (embedded storage, no worker): both generators."""
    from bench.loadtest import plot, run_async

    gateway = run_gateway(make_settings())
    for extra, name in [([], "client"), (["--raw-submit"], "raw")]:
        started = time.monotonic()
        summary = run_async.main([
            "--base-url", gateway.url, "--api-key", "alice-secret-key,bob-secret-key",
            "--scenario", "gateway", "--rate", "10", "--ramp-up", "1", "--duration", "2",
            "--clip-seconds", "1", "--out", str(tmp_path / name), *extra])
        assert time.monotonic() - started < 30
        assert summary["errors"] == 0 and summary["submits_accepted"] >= 10
        rows = list(csv.DictReader((tmp_path / name / "requests.csv").open()))
        assert {row["submit_status"] for row in rows} == {"202"}
        assert json.loads((tmp_path / name / "summary.json").read_text())["scenario"] == "gateway"
    # no worker: the mixed scenario's jobs stay queued, are canceled at the drain deadline
    summary = run_async.main([
        "--base-url", gateway.url, "--api-key", "alice-secret-key", "--scenario", "mixed",
        "--rate", "2", "--ramp-up", "0", "--duration", "1", "--drain-timeout", "2",
        "--mix", "1:1", "--poll-interval", "0.5", "--out", str(tmp_path / "mixed")])
    assert summary["final_states"] == {"unfinished": summary["jobs_started"]}
    plot.plot([tmp_path / "raw", tmp_path / "mixed"], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
