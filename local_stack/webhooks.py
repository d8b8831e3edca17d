"""A webhook receiver on a free loopback port: records every POST, answers as told."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from local_stack.processes import wait_until


class WebhookReceiver:
    """A loopback HTTP server recording every POST as (headers, body); it answers with the
    queued status codes, then 200. Header names are lower-cased."""

    def __init__(self, statuses: tuple[int, ...] | list[int] = (), port: int = 0) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/musicedit"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events_for(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.received if json.loads(b)["job"]["id"] == job_id]

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} webhook(s)")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
