"""A small typed client for the musicedit API (sync and async, httpx).

    with MusiceditClient("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit("song.wav", "Add drums", seed=1)
        job = client.wait(job.id, timeout=600)   # follows the job's event stream
        audio = client.download(job.id)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from musicedit.capabilities import Capabilities
from musicedit.event_stream import EventStreamReader, JobEvent
from musicedit.jobs import EditJobList, EditJobView

TERMINAL = {"succeeded", "failed", "canceled"}
# Connection-level failures worth another attempt: the server never answered (refused,
# reset, or a pooled keep-alive connection the server closed just as we reused it).
RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
RETRY_BACKOFF_SECONDS = 0.2


def _retryable(exc: httpx.TransportError, safe: bool) -> bool:
    """Reads and keyed submits are safe to repeat after any of `RETRYABLE`; anything else only
    when the request surely never left (connect failed)."""
    return isinstance(exc, httpx.ConnectError) or (safe and isinstance(exc, RETRYABLE))


def _submit_headers(idempotency_key: str | None) -> dict[str, str]:
    # Every submit carries a key (a fresh one unless the caller chose it), so a retry after a
    # lost answer returns the job the first attempt created instead of a second job.
    return {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}


class ApiError(Exception):
    """A problem+json answer from the server."""

    def __init__(self, status: int, problem: dict[str, Any], headers: httpx.Headers) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem
        self.retry_after = int(headers["Retry-After"]) if "Retry-After" in headers else None


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    raise ApiError(response.status_code, problem, response.headers)


def _form(
    instruction: str,
    params: dict[str, Any],
    output_format: str | None,
    webhook_url: str | None,
) -> dict[str, str]:
    data = {"instruction": instruction}
    data.update({name: str(value) for name, value in params.items() if value is not None})
    if output_format:
        data["output_format"] = output_format
    if webhook_url:
        data["webhook_url"] = webhook_url
    return data


def _input_parts(audio: Any, filename: str | None,
                 source_job_id: str | None) -> dict[str, Any]:
    """The input part of the form: the file, or the job whose result is edited (sent as a
    form part too, so that the body is multipart either way)."""
    if (audio is None) == (source_job_id is None):
        raise ValueError("pass the audio, or source_job_id to edit a job's result (one of them)")
    if source_job_id is not None:
        return {"source_job_id": (None, source_job_id)}
    return {"file": _file_part(audio, filename)}


def _file_part(audio: str | Path | bytes, filename: str | None) -> tuple[str, Any, str]:
    if isinstance(audio, bytes):
        return (filename or "input.wav", audio, "application/octet-stream")
    path = Path(audio)
    return (filename or path.name, path.open("rb"), "application/octet-stream")


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


class MusiceditClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )
        self.retries = retries

    def _request(
        self,
        method: str,
        url: str,
        *,
        safe: bool,
        build: Callable[[], tuple[dict[str, Any], Callable[[], None] | None]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send, retrying connection-level failures (see `_retryable`) with backoff. `build`
        makes fresh keyword arguments per attempt (an upload's file is consumed by each)."""
        for attempt in range(self.retries + 1):
            extra, cleanup = build() if build else ({}, None)
            try:
                return self.http.request(method, url, **kwargs, **extra)
            except httpx.TransportError as exc:
                if attempt == self.retries or not _retryable(exc, safe):
                    raise
            finally:
                if cleanup is not None:
                    cleanup()
            time.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    def __enter__(self) -> MusiceditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        audio: str | Path | bytes | None,
        instruction: str,
        *,
        source_job_id: str | None = None,
        engine: str | None = None,
        start_seconds: float | None = None,
        end_seconds: float | None = None,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        cfg_coef: float | None = None,
        output_format: str | None = None,
        output_sample_rate: int | None = None,
        output_channels: int | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> EditJobView:
        """Submit an edit of `audio` (a path or bytes), or with `audio=None` and
        `source_job_id`, of that job's result; `start_seconds`/`end_seconds` edit only that
        range; the output has the input's rate and channels unless asked otherwise; `engine`
        (`auto`, `generative`, `separation`) picks what runs the steps."""
        params = {"seed": seed, "top_k": top_k, "top_p": top_p, "temperature": temperature,
                  "cfg_coef": cfg_coef, "start_seconds": start_seconds,
                  "end_seconds": end_seconds, "output_sample_rate": output_sample_rate,
                  "output_channels": output_channels, "engine": engine}
        _input_parts(audio, filename, source_job_id)  # refuse before sending anything

        def build() -> tuple[dict[str, Any], Callable[[], None] | None]:
            parts = _input_parts(audio, filename, source_job_id)
            file = parts.get("file")
            return {"files": parts}, getattr(file[1], "close", None) if file else None

        response = self._request(
            "POST", "/v1/edits", safe=True, build=build,
            data=_form(instruction, params, output_format, webhook_url),
            headers=_submit_headers(idempotency_key),
        )
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    def get(self, job_id: str) -> EditJobView:
        response = self._request("GET", f"/v1/edits/{job_id}", safe=True)
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    def list(self, limit: int = 20, before: int | None = None) -> EditJobList:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        response = self._request("GET", "/v1/edits", safe=True, params=params)
        _raise_for_problem(response)
        return EditJobList.model_validate(response.json())

    def iter_jobs(self, page_size: int = 100) -> Iterator[EditJobView]:
        """Every job of this key, newest first, following `next_cursor` page by page."""
        before = None
        while True:
            page = self.list(limit=page_size, before=before)
            yield from page.items
            if page.next_cursor is None:
                return
            before = page.next_cursor

    def cancel(self, job_id: str) -> EditJobView:
        response = self._request("DELETE", f"/v1/edits/{job_id}", safe=False)
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """The job's events (`GET /v1/edits/{id}/events`) until its `end` event, which is the
        last one. A dropped stream is resumed with `Last-Event-ID`, so the end is never
        missed; `retries` failed reconnections in a row raise.

        Raises:
            ApiError: `404` for an unknown job (or a server without event streams).
        """
        for event in _sync_events(self, job_id, last_event_id, deadline=None):
            if event is not None:
                yield event

    def wait(self, job_id: str, timeout: float = 600.0, poll_seconds: float = 0.5) -> EditJobView:
        """Wait until the job is terminal, following its event stream (polling every
        `poll_seconds` on a server without one); raise TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        try:
            for event in _sync_events(self, job_id, None, deadline):
                if event is not None and event.event == "end":
                    return event.job
        except ApiError as exc:
            if exc.status != 404:
                raise
        while True:
            job = self.get(job_id)
            if job.status.value in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
            time.sleep(poll_seconds)

    def capabilities(self) -> Capabilities:
        """Operations, stems, limits, sampling ranges and features (`GET /v1/capabilities`)."""
        response = self._request("GET", "/v1/capabilities", safe=True)
        _raise_for_problem(response)
        return Capabilities.model_validate(response.json())

    def download(self, job_id: str) -> bytes:
        """The result audio (follows the presigned redirect without sending the API key)."""
        response = self._request("GET", f"/v1/edits/{job_id}/audio", safe=True,
                                 follow_redirects=False)
        if response.status_code in (301, 302, 303, 307, 308):
            redirected = httpx.get(response.headers["Location"], timeout=self.http.timeout)
            _raise_for_problem(redirected)
            return redirected.content
        _raise_for_problem(response)
        return response.content


class AsyncMusiceditClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )
        self.retries = retries

    async def _request(self, method: str, url: str, *, safe: bool, **kwargs: Any) -> httpx.Response:
        """`MusiceditClient._request` for asyncio (bodies here are bytes: resent as they are)."""
        for attempt in range(self.retries + 1):
            try:
                return await self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries or not _retryable(exc, safe):
                    raise
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    async def __aenter__(self) -> AsyncMusiceditClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(
        self,
        audio: str | Path | bytes | None,
        instruction: str,
        *,
        source_job_id: str | None = None,
        engine: str | None = None,
        start_seconds: float | None = None,
        end_seconds: float | None = None,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        cfg_coef: float | None = None,
        output_format: str | None = None,
        output_sample_rate: int | None = None,
        output_channels: int | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> EditJobView:
        """`MusiceditClient.submit` for asyncio."""
        params = {"seed": seed, "top_k": top_k, "top_p": top_p, "temperature": temperature,
                  "cfg_coef": cfg_coef, "start_seconds": start_seconds,
                  "end_seconds": end_seconds, "output_sample_rate": output_sample_rate,
                  "output_channels": output_channels, "engine": engine}
        if audio is not None and not isinstance(audio, bytes):
            filename = filename or Path(audio).name
            audio = Path(audio).read_bytes()
        response = await self._request(
            "POST", "/v1/edits", safe=True,
            data=_form(instruction, params, output_format, webhook_url),
            files=_input_parts(audio, filename, source_job_id),
            headers=_submit_headers(idempotency_key),
        )
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    async def get(self, job_id: str) -> EditJobView:
        response = await self._request("GET", f"/v1/edits/{job_id}", safe=True)
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    async def list(self, limit: int = 20, before: int | None = None) -> EditJobList:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        response = await self._request("GET", "/v1/edits", safe=True, params=params)
        _raise_for_problem(response)
        return EditJobList.model_validate(response.json())

    async def iter_jobs(self, page_size: int = 100) -> AsyncIterator[EditJobView]:
        """Every job of this key, newest first, following `next_cursor` page by page."""
        before = None
        while True:
            page = await self.list(limit=page_size, before=before)
            for job in page.items:
                yield job
            if page.next_cursor is None:
                return
            before = page.next_cursor

    async def cancel(self, job_id: str) -> EditJobView:
        response = await self._request("DELETE", f"/v1/edits/{job_id}", safe=False)
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    async def events(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[JobEvent]:
        """`MusiceditClient.events` for asyncio."""
        async for event in _async_events(self, job_id, last_event_id, deadline=None):
            if event is not None:
                yield event

    async def wait(
        self, job_id: str, timeout: float = 600.0, poll_seconds: float = 0.5
    ) -> EditJobView:
        """`MusiceditClient.wait` for asyncio."""
        deadline = time.monotonic() + timeout
        try:
            async for event in _async_events(self, job_id, None, deadline):
                if event is not None and event.event == "end":
                    return event.job
        except ApiError as exc:
            if exc.status != 404:
                raise
        while True:
            job = await self.get(job_id)
            if job.status.value in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
            await asyncio.sleep(poll_seconds)

    async def capabilities(self) -> Capabilities:
        response = await self._request("GET", "/v1/capabilities", safe=True)
        _raise_for_problem(response)
        return Capabilities.model_validate(response.json())

    async def download(self, job_id: str) -> bytes:
        response = await self._request("GET", f"/v1/edits/{job_id}/audio", safe=True,
                                       follow_redirects=False)
        if response.status_code in (301, 302, 303, 307, 308):
            async with httpx.AsyncClient(timeout=self.http.timeout) as plain:
                redirected = await plain.get(response.headers["Location"])
            _raise_for_problem(redirected)
            return redirected.content
        _raise_for_problem(response)
        return response.content


def _stream_timeout(http: httpx.Client | httpx.AsyncClient,
                    deadline: float | None) -> httpx.Timeout:
    """The client's timeouts, reads cut short at `deadline` (heartbeats keep a stream read)."""
    if deadline is None:
        return http.timeout
    left = max(0.05, deadline - time.monotonic())
    read = left if http.timeout.read is None else min(http.timeout.read, left)
    return httpx.Timeout(http.timeout.connect, read=read, write=http.timeout.write,
                         pool=http.timeout.pool)


def _past(deadline: float | None, job_id: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"job {job_id} did not end before the deadline")


def _sync_events(client: MusiceditClient, job_id: str, last_event_id: str | None,
                 deadline: float | None) -> Iterator[JobEvent | None]:
    """A job's events, reconnecting with `Last-Event-ID`; None for each line that completes
    no event (heartbeats included), so the caller can check its deadline."""
    reader = EventStreamReader(last_event_id)
    failures = 0
    while not reader.ended:
        _past(deadline, job_id)
        try:
            with client.http.stream("GET", f"/v1/edits/{job_id}/events", headers=reader.headers(),
                                    timeout=_stream_timeout(client.http, deadline)) as response:
                if response.status_code == 204:  # the end was already read
                    return
                if response.status_code >= 400:
                    response.read()
                    _raise_for_problem(response)
                for line in response.iter_lines():
                    event = reader.feed(line)
                    failures = 0
                    yield event
                    _past(deadline, job_id)
        except httpx.TransportError:
            _past(deadline, job_id)
            failures += 1
            if failures > client.retries:
                raise
        if not reader.ended:
            time.sleep(reader.retry_seconds)


async def _async_events(client: AsyncMusiceditClient, job_id: str, last_event_id: str | None,
                        deadline: float | None) -> AsyncIterator[JobEvent | None]:
    """`_sync_events` for asyncio."""
    reader = EventStreamReader(last_event_id)
    failures = 0
    while not reader.ended:
        _past(deadline, job_id)
        try:
            async with client.http.stream(
                    "GET", f"/v1/edits/{job_id}/events", headers=reader.headers(),
                    timeout=_stream_timeout(client.http, deadline)) as response:
                if response.status_code == 204:
                    return
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_problem(response)
                async for line in response.aiter_lines():
                    event = reader.feed(line)
                    failures = 0
                    yield event
                    _past(deadline, job_id)
        except httpx.TransportError:
            _past(deadline, job_id)
            failures += 1
            if failures > client.retries:
                raise
        if not reader.ended:
            await asyncio.sleep(reader.retry_seconds)
