"""The wire format of a job's event stream (`GET /v1/edits/{id}/events`), written once: the
gateway encodes with it, the Python clients parse with it.

A stream is Server-Sent Events (`text/event-stream`). Every event's data is the job as
`GET /v1/edits/{id}` shows it; `job` events come while it is queued or running (state, queue
position, progress), then exactly one `end` event (succeeded, failed or canceled) and the
stream closes. Lines starting with `:` are heartbeats.

An event's id is a digest of what the event says (the job view without its links), not a
counter: any gateway replica can tell whether a reconnecting client's `Last-Event-ID` is the
job's current state (nothing to resend) or not (send it), with no per-stream memory. So a
reconnect never loses the end, and a client that already has the end gets `204` (which also
stops a browser's `EventSource` from reconnecting).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from musicedit.jobs import EditJobView

EventName = Literal["job", "end"]
MEDIA_TYPE = "text/event-stream"
# How long a client waits before reconnecting (the `retry` field, milliseconds).
RETRY_MILLISECONDS = 1000
HEARTBEAT = b": keep-alive\n\n"
# The view's links depend on the base URL a request used; they are not part of the state.
_LINKS = {"status_url", "audio_url"}


def event_id(view: EditJobView) -> str:
    """The id of the event that shows `view`: equal views, equal ids, on any replica."""
    state = view.model_dump_json(exclude=_LINKS)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream: `end` for a job in a final state, else `job`."""

    event: EventName
    id: str
    job: EditJobView

    @classmethod
    def of(cls, view: EditJobView) -> JobEvent:
        return cls("end" if view.status.terminal else "job", event_id(view), view)

    def encode(self) -> bytes:
        """The event as it goes on the wire."""
        data = self.job.model_dump_json()
        return f"id: {self.id}\nevent: {self.event}\ndata: {data}\n\n".encode()


def stream_preamble() -> bytes:
    """What a stream starts with: the reconnection delay."""
    return f"retry: {RETRY_MILLISECONDS}\n\n".encode()


@dataclass
class EventStreamReader:
    """Parses a stream line by line (the SSE rules the server uses: `id`, `event`, `data`,
    `retry`, `:` comments) and remembers what a reconnect must send.

    Attributes:
        last_event_id: the id of the last event read (sent back as `Last-Event-ID`).
        retry_seconds: the server's reconnection delay.
        ended: the `end` event was read.
    """

    last_event_id: str | None = None
    retry_seconds: float = RETRY_MILLISECONDS / 1000
    ended: bool = False
    _fields: dict[str, str] = field(default_factory=dict)
    _data: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """Headers of the next (re)connection."""
        headers = {"Accept": MEDIA_TYPE}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def feed(self, line: str) -> JobEvent | None:
        """One line of the stream (without its line ending); the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_seconds = int(value) / 1000
        elif name in ("id", "event"):
            self._fields[name] = value
        return None

    def _dispatch(self) -> JobEvent | None:
        fields, data = self._fields, self._data
        self._fields, self._data = {}, []
        if "id" in fields:
            self.last_event_id = fields["id"]
        if not data:
            return None
        view = EditJobView.model_validate(json.loads("\n".join(data)))
        event = JobEvent("end" if fields.get("event") == "end" else "job",
                         fields.get("id", ""), view)
        self.ended = self.ended or event.event == "end"
        return event
