"""Gateway Prometheus metrics (one registry per app, so tests can build several apps)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from musicedit.jobs import JobState
from musicedit.logs import log_event

log = logging.getLogger("musicedit.service")


class GatewayMetrics:
    """`queue_size` and `jobs_by_state` are read from the job store at every scrape."""

    def __init__(
        self,
        queue_size: Callable[[], int],
        jobs_by_state: Callable[[], Mapping[JobState, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "musicedit_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "musicedit_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.jobs = Counter(
            "musicedit_jobs_total",
            "Jobs moved into a state by the gateway (queued on submit, canceled on DELETE).",
            ["state"],
            registry=self.registry,
        )
        self.upload_bytes = Histogram(
            "musicedit_upload_bytes",
            "Size of accepted uploads in bytes.",
            buckets=tuple(2**n for n in range(16, 28)),
            registry=self.registry,
        )
        self.registry.register(_QueueSizeCollector(queue_size))
        if jobs_by_state is not None:
            self.registry.register(_JobsByStateCollector(jobs_by_state))


class _QueueSizeCollector(Collector):
    """`musicedit_queue_size`, read from the job store at scrape time."""

    def __init__(self, queue_size: Callable[[], int]) -> None:
        self.queue_size = queue_size

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily("musicedit_queue_size", "Jobs waiting in the queue.")]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("musicedit_queue_size", "Jobs waiting in the queue.")
        try:
            family.add_metric([], float(self.queue_size()))
        except Exception as exc:  # a scrape must not fail because Redis is down
            log_event(log, "metrics_queue_size_unavailable", logging.WARNING,
                      error=type(exc).__name__)
            return []
        return [family]


class _JobsByStateCollector(Collector):
    """`musicedit_num_jobs{state="queued"|"running"}`: unfinished jobs of all workers, read
    from the job store at scrape time (finished ones are `musicedit_jobs_total` counters)."""

    NAME = "musicedit_num_jobs"
    HELP = "Jobs queued or running now, from the job store."

    def __init__(self, jobs_by_state: Callable[[], Mapping[JobState, int]]) -> None:
        self.jobs_by_state = jobs_by_state

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])
        try:
            counts = self.jobs_by_state()
        except Exception as exc:  # a scrape must not fail because Redis is down
            log_event(log, "metrics_jobs_by_state_unavailable", logging.WARNING,
                      error=type(exc).__name__)
            return []
        for state, count in counts.items():
            family.add_metric([state.value], float(count))
        return [family]


class RequestMetricsMiddleware:
    """Counts and times every request by route template; logs one line per request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_duration.labels(template, method).observe(elapsed)
            log_event(log, "request", route=template, method=method, status=status,
                      duration_ms=round(elapsed * 1000, 1), job_id=scope.get("musicedit.job_id"),
                      key_name=scope.get("musicedit.key_name"))
