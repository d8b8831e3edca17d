"""Child processes of the local stack: free ports, readiness, stopping, logs, memory."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

STARTUP_TIMEOUT = 60.0


class ServiceNotReady(RuntimeError):
    """A service did not come up (or exited) in time; the message ends with its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               log: Path | None = None) -> None:
    """Poll `check` until it returns true.

    Errors from `check` count as not ready (services refuse connections while starting),
    except `ServiceNotReady` itself (the service died: no point waiting).

    Raises:
        ServiceNotReady: `check` was not true within `timeout` seconds; the message names
            `what` and ends with the tail of `log`.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ServiceNotReady:
            raise
        except Exception as exc:
            last_error = exc
        time.sleep(0.1)
    raise ServiceNotReady(f"{what} not ready after {timeout} s (last error: {last_error!r})"
                          f"{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- log tail ---\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@dataclass
class ChildProcess:
    """A process this harness started: its pid, its memory, and stopping it.

    `stop()` sends SIGTERM, then SIGKILL after `stop_timeout` seconds; `start()` (in each
    subclass) may run again afterwards, as after an outage.
    """

    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    stop_timeout: ClassVar[float] = 10.0

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def rss(self) -> int:
        """Resident set size (bytes)."""
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=self.stop_timeout)
            self.process = None


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (bytes)."""
    import psutil  # a test and benchmark tool (requirements/dev.txt)

    rss: int = psutil.Process(pid).memory_info().rss
    return rss


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON-line events of a log file (non-JSON lines such as Celery's banner skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
