"""Worker Prometheus metrics (one registry per runtime, so tests can build several)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RTF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class WorkerMetrics:
    """Decode, job and model metrics of one worker process (vLLM/TGI-style names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batch_size = Histogram(
            "musicedit_batch_size", "Jobs decoded together in one engine step.",
            buckets=BATCH_BUCKETS, registry=r)
        self.decode_step_seconds = Histogram(
            "musicedit_decode_step_seconds", "Wall time of one engine decode step.",
            buckets=STEP_BUCKETS, registry=r)
        self.generated_frames = Counter(
            "musicedit_generated_frames", "Audio frames (codec time steps) generated.", registry=r)
        self.decode_step_isolations = Counter(
            "musicedit_decode_step_isolations",
            "Decode steps whose batched forward raised and was re-run on parts of the batch, "
            "so that only the job(s) it raised for failed.", registry=r)
        self.job_decode_seconds = Histogram(
            "musicedit_job_decode_seconds", "Time from engine submit to a job's audio.",
            buckets=JOB_BUCKETS, registry=r)
        self.time_in_queue_seconds = Histogram(
            "musicedit_time_in_queue_seconds", "Time from submission to a worker's first claim.",
            buckets=JOB_BUCKETS, registry=r)
        self.real_time_factor = Histogram(
            "musicedit_real_time_factor", "Audio seconds produced per wall second of decoding.",
            buckets=RTF_BUCKETS, registry=r)
        self.model_load_seconds = Gauge(
            "musicedit_model_load_seconds", "Time this worker took to load its model.", registry=r)
        self.jobs = Counter(
            "musicedit_jobs", "Jobs this worker moved into a state (running: each claim).",
            ["state"], registry=r)
        self.engine_active_jobs = Gauge(
            "musicedit_engine_active_jobs", "Jobs inside the engine (decoding or waiting).",
            registry=r)
        self.graph_capture_failures = Gauge(
            "musicedit_cuda_graph_capture_failures",
            "Decode-step shapes that run eagerly because their CUDA graph capture failed when "
            "the engine was built (each is logged once).", registry=r)

        # the source separator (remove/extract at separation quality, issue 18)
        self.separation_batch_segments = Histogram(
            "musicedit_separation_batch_segments",
            "Separator segments (of any jobs) computed in one forward.",
            buckets=BATCH_BUCKETS, registry=r)
        self.separation_step_seconds = Histogram(
            "musicedit_separation_step_seconds",
            "Wall time of one separator forward and its overlap-add.",
            buckets=STEP_BUCKETS + (5.0, 10.0), registry=r)
        self.separation_segments = Counter(
            "musicedit_separation_segments", "Separator segments computed.", registry=r)
        self.separation_step_isolations = Counter(
            "musicedit_separation_step_isolations",
            "Separator forwards that raised and were re-run on parts of the batch.", registry=r)
        self.job_separation_seconds = Histogram(
            "musicedit_job_separation_seconds",
            "Time from separator submit to a job's separated audio (one group of steps).",
            buckets=JOB_BUCKETS, registry=r)
        self.separation_active_jobs = Gauge(
            "musicedit_separation_active_jobs",
            "Jobs inside the separation engine (separating or waiting).", registry=r)

    def on_separation_step(self, step: Any) -> None:
        """Separation engine `on_step` callback: one `SeparationStep` per forward."""
        self.separation_batch_segments.observe(step.segments)
        self.separation_step_seconds.observe(step.seconds)
        self.separation_segments.inc(step.segments)
        if step.isolated:
            self.separation_step_isolations.inc()

    def watch_separation(self, active_jobs: Callable[[], int]) -> None:
        self.separation_active_jobs.set_function(active_jobs)

    def on_step(self, step: Any) -> None:
        """Engine `on_step` callback (engine thread): one `StepInfo` per decode step."""
        self.batch_size.observe(step.batch_size)
        self.decode_step_seconds.observe(step.seconds)
        self.generated_frames.inc(step.frames)
        if step.isolated:
            self.decode_step_isolations.inc()

    def watch_engine(self, active_jobs: Callable[[], int],
                     capture_failures: Callable[[], int] = lambda: 0) -> None:
        self.engine_active_jobs.set_function(active_jobs)
        self.graph_capture_failures.set_function(capture_failures)

    def watch_cuda(self) -> None:
        """Add `musicedit_gpu_memory_bytes` (only call when CUDA is present)."""
        self.registry.register(_CudaMemoryCollector())

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on `host:port` from a daemon thread (none if `port` is 0).

        It is never shut down explicitly: it lives as long as the worker process.
        """
        if port:
            start_http_server(port, addr=host, registry=self.registry)


class _CudaMemoryCollector(Collector):
    """`musicedit_gpu_memory_bytes{device, kind}`: allocated and reserved, read at scrape time."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        import torch

        family = GaugeMetricFamily("musicedit_gpu_memory_bytes", "CUDA memory of this worker.",
                                   labels=["device", "kind"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            family.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
            family.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
        yield family
