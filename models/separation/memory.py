"""The separation engine's device memory plan: how many segments one forward may take.

A forward's peak grows linearly with its batch (the windows, the spectrograms and every
layer's activations are per segment; the weights and cuFFT plans are not). It is measured
once when the engine is built, for one and for two segments of silence, and the batch is the
largest that fits the budget, capped by ``max_batch_segments``. Nothing else of a job is on
the device: inputs and accumulators stay on the host.
"""
from __future__ import annotations

import typing as tp

import torch

# The decoding engine's peak probe is generic (synchronise, reset, run, read the peak).
from ..engine.memory import _measure_peak

if tp.TYPE_CHECKING:
    from .engine import SeparationEngine


class SeparationBudgetTooSmall(ValueError):
    """Not even one segment's forward fits the configured memory budget."""


def batch_for_budget(peak_one: int, peak_two: int, max_batch: int, budget: int) -> int:
    """Most segments per forward within `budget` bytes, from the measured peaks (bytes above
    the resident weights) of a forward of one and of two segments."""
    per_segment = max(1, peak_two - peak_one)
    fixed = max(0, peak_one - per_segment)
    fit = (budget - fixed) // per_segment
    if fit < 1:
        raise SeparationBudgetTooSmall(
            f"a forward of one segment needs {peak_one} bytes of device memory; the budget is "
            f"{budget} bytes (raise gpu_memory_fraction or memory_budget_bytes)")
    return int(min(max_batch, fit))


def measure_forward(engine: SeparationEngine, segments: int) -> int:
    """Peak device bytes of one forward of `segments` silent windows, in the engine's precision."""
    window = engine.model.valid_length(engine.segment_samples)
    shape = (segments, engine.separator.channels, window)

    @torch.inference_mode()
    def probe() -> None:
        with engine.precision():
            engine.model(torch.zeros(shape, device=engine.device))

    return _measure_peak(engine.device, probe)
