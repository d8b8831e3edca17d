"""Container health check: `python deploy/healthcheck.py gateway|worker` exits 0 when healthy.

gateway: `GET /healthz` on `MUSICEDIT_PORT`. worker: `GET /metrics` on
`MUSICEDIT_WORKER_METRICS_PORT`, which the worker serves only once its model is loaded and
its engine started. Ports come from the one settings object, like everything else.
"""

from __future__ import annotations

import sys
import urllib.request

from musicedit.settings import Settings


def main(role: str) -> int:
    settings = Settings()
    if role == "gateway":
        url = f"http://127.0.0.1:{settings.port}/healthz"
    elif role == "worker":
        if not settings.worker_metrics_port:
            return 0  # metrics disabled: nothing to probe, the process being up is all we know
        url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    else:
        print(f"usage: healthcheck.py gateway|worker (got {role!r})", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback URL)
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
