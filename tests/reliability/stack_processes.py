"""Processes for fault, security and soak runs: the gateway as its own process (so its memory
and its log are its own), resident-memory readers, and the settings of one local stack.

A plain module: tests import it by name, `bench/soak.py` imports it by path.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]

# The gateway as production runs it: uvicorn with JSON-line logs on stderr, access log on.
GATEWAY_MAIN = """
import sys
import uvicorn
from musicedit.logs import configure_logging
from musicedit.settings import get_settings
from service.app import create_app
settings = get_settings()
configure_logging(settings.log_level)
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
            access_log=True, timeout_graceful_shutdown=5)
"""


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (bytes)."""
    return psutil.Process(pid).memory_info().rss


@dataclass
class GatewayProcess:
    """`service.app` under uvicorn in a subprocess, configured by `MUSICEDIT_*` values."""

    env: dict[str, str]
    port: int
    log: Path
    shared: Any  # tests/conftest.py: wait_until, stop_process
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", GATEWAY_MAIN, str(self.port)], cwd=REPO, env=self.env,
                stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}; see {self.log}")
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

        self.shared.wait_until(up, 60, "gateway process", self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.shared.stop_process(self.process, timeout=15)
