"""A small typed client for the musicedit API (sync and async, httpx).

    with MusiceditClient("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit("song.wav", "Add drums", seed=1)
        job = client.wait(job.id, timeout=600)
        audio = client.download(job.id)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from musicedit.jobs import EditJobList, EditJobView

TERMINAL = {"succeeded", "failed", "canceled"}


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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> "MusiceditClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        audio: str | Path | bytes,
        instruction: str,
        *,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        cfg_coef: float | None = None,
        output_format: str | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> EditJobView:
        params = {"seed": seed, "top_k": top_k, "top_p": top_p, "temperature": temperature,
                  "cfg_coef": cfg_coef}
        part = _file_part(audio, filename)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            response = self.http.post(
                "/v1/edits",
                data=_form(instruction, params, output_format, webhook_url),
                files={"file": part},
                headers=headers,
            )
        finally:
            if hasattr(part[1], "close"):
                part[1].close()
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    def get(self, job_id: str) -> EditJobView:
        response = self.http.get(f"/v1/edits/{job_id}")
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    def list(self, limit: int = 20, before: int | None = None) -> EditJobList:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        response = self.http.get("/v1/edits", params=params)
        _raise_for_problem(response)
        return EditJobList.model_validate(response.json())

    def cancel(self, job_id: str) -> EditJobView:
        response = self.http.delete(f"/v1/edits/{job_id}")
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    def wait(self, job_id: str, timeout: float = 600.0, poll_seconds: float = 0.5) -> EditJobView:
        """Poll until the job is terminal; raise TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status.value in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
            time.sleep(poll_seconds)

    def download(self, job_id: str) -> bytes:
        """The result audio (follows the presigned redirect without sending the API key)."""
        response = self.http.get(f"/v1/edits/{job_id}/audio", follow_redirects=False)
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> "AsyncMusiceditClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(
        self,
        audio: str | Path | bytes,
        instruction: str,
        *,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        cfg_coef: float | None = None,
        output_format: str | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> EditJobView:
        params = {"seed": seed, "top_k": top_k, "top_p": top_p, "temperature": temperature,
                  "cfg_coef": cfg_coef}
        if not isinstance(audio, bytes):
            filename = filename or Path(audio).name
            audio = Path(audio).read_bytes()
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self.http.post(
            "/v1/edits",
            data=_form(instruction, params, output_format, webhook_url),
            files={"file": _file_part(audio, filename)},
            headers=headers,
        )
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    async def get(self, job_id: str) -> EditJobView:
        response = await self.http.get(f"/v1/edits/{job_id}")
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    async def list(self, limit: int = 20, before: int | None = None) -> EditJobList:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        response = await self.http.get("/v1/edits", params=params)
        _raise_for_problem(response)
        return EditJobList.model_validate(response.json())

    async def cancel(self, job_id: str) -> EditJobView:
        response = await self.http.delete(f"/v1/edits/{job_id}")
        _raise_for_problem(response)
        return EditJobView.model_validate(response.json())

    async def wait(
        self, job_id: str, timeout: float = 600.0, poll_seconds: float = 0.5
    ) -> EditJobView:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job.status.value in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
            await asyncio.sleep(poll_seconds)

    async def download(self, job_id: str) -> bytes:
        response = await self.http.get(f"/v1/edits/{job_id}/audio", follow_redirects=False)
        if response.status_code in (301, 302, 303, 307, 308):
            async with httpx.AsyncClient(timeout=self.http.timeout) as plain:
                redirected = await plain.get(response.headers["Location"])
            _raise_for_problem(redirected)
            return redirected.content
        _raise_for_problem(response)
        return response.content
