"""deploy/healthcheck.py (the images' HEALTHCHECK) against a real gateway and worker endpoint."""

from __future__ import annotations

import os
import subprocess
import sys

from deploy_files import REPO, free_port

SCRIPT = REPO / "deploy" / "healthcheck.py"


def healthcheck(role: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MUSICEDIT_")}
    return subprocess.run([sys.executable, str(SCRIPT), role], capture_output=True, text=True,
                          env={**base, "PYTHONPATH": str(REPO), **env}, timeout=60)


def test_gateway_healthy_then_down(make_settings, run_gateway):
    gateway = run_gateway(make_settings())
    port = gateway.url.rsplit(":", 1)[1]
    assert healthcheck("gateway", MUSICEDIT_PORT=port).returncode == 0
    gateway.stop()
    result = healthcheck("gateway", MUSICEDIT_PORT=port)
    assert result.returncode == 1 and "/healthz" in result.stderr


def test_worker_metrics_endpoint():
    from worker.metrics import WorkerMetrics

    port = free_port()
    assert healthcheck("worker", MUSICEDIT_WORKER_METRICS_PORT=str(port)).returncode == 1
    WorkerMetrics().serve("127.0.0.1", port)  # daemon thread, lives until the test run ends
    assert healthcheck("worker", MUSICEDIT_WORKER_METRICS_PORT=str(port)).returncode == 0
    assert healthcheck("nonsense").returncode == 2
