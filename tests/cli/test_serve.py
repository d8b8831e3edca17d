"""`musicedit serve` (what `make serve` runs): no Redis, S3 or GPU; an edit end to end over HTTP
with the curl commands it prints; Ctrl-C stops the gateway and its worker."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from local_stack import child_env, free_ports, stop_process, wait_until
from local_stack.settings import REPO


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def run_shell(command: str) -> str:
    return subprocess.run(command, shell=True, check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.mark.slow
def test_serve_edits_end_to_end_with_the_printed_curl_commands(
        model_cache, tmp_path, audio_factory) -> None:
    port, metrics_port = free_ports(2)
    data_dir = tmp_path / "var"
    env = child_env({"data_dir": str(data_dir), "port": str(port),
                          "worker_metrics_port": str(metrics_port),
                          "model_cache_dir": str(model_cache)})
    env.pop("MUSICEDIT_API_KEYS", None)  # the embedded default makes a dev key
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        serve = subprocess.Popen([sys.executable, "-m", "cli", "serve"], cwd=REPO,
                                 env=env, stdout=stdout, stderr=stderr)
    try:
        wait_until(lambda: serve.poll() is None and "is ready on" in out.read_text(),
                          120, "musicedit serve", err)
        banner = out.read_text()
        key = (data_dir / "dev-api-key").read_text().strip()
        assert f"http://127.0.0.1:{port}" in banner and key in banner
        commands = [line.strip() for line in banner.splitlines() if line.strip().startswith("curl")]
        submit, poll, download = commands

        clip = audio_factory(seconds=3.0, sample_rate=48000)
        job = json.loads(run_shell(submit.replace("song.wav", shlex.quote(str(clip)))))
        assert job["status"] == "queued"
        deadline = time.monotonic() + 60
        while (state := json.loads(run_shell(poll.replace("JOB_ID", job["id"]))))["status"] in (
                "queued", "running"):
            assert time.monotonic() < deadline, f"job still {state['status']}"
            time.sleep(0.3)
        assert state["status"] == "succeeded", state
        result = tmp_path / "edited.wav"
        run_shell(download.replace("JOB_ID", job["id"]).replace("edited.wav", str(result)))
        assert sf.info(str(result)).duration == pytest.approx(3.0, abs=0.02)

        workers = child_pids(serve.pid)
        assert workers, "serve runs its worker as a child process"
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        assert serve.wait(timeout=60) == 0
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if serve.poll() is None:
            stop_process(serve)
