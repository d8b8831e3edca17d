"""How a long input is cut into the separator's overlapping segments and put back together.

The plan is :func:`demucs.apply.apply_model`'s (``split=True``, ``shifts=0``): segments of the
model's training length start every ``(1 - overlap)`` of it; each is read centred in a window of
the length the model takes (:meth:`HTDemucs.valid_length`), with the input's own samples as
context where they exist and zeros past its ends; the model's output is trimmed back to the
segment and added with a triangular weight (peak at the segment's middle, raised to
``transition_power``), and the sum is divided by the sum of the weights. Here the segments of
many jobs are computed in one batch, so this module only says *where* each segment reads and
writes; the engine decides *when* it runs.
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segment:
    """One segment of a job: output samples ``[offset, offset + length)``, computed from the
    model window ``[start, start + window)`` of the input (``start`` may be negative and the
    window may run past the end: zeros there)."""

    index: int
    offset: int
    length: int
    start: int
    window: int

    @property
    def trim(self) -> int:
        """Where the segment's samples begin in the model's output window."""
        return (self.window - self.length) // 2


def segment_length(samplerate: int, segment_seconds: float) -> int:
    """Samples in one segment, rounded as ``apply_model`` rounds them."""
    return int(samplerate * segment_seconds)


def plan_segments(length: int, seg_length: int, overlap: float, window_for: tp.Callable[[int], int]
                  ) -> list[Segment]:
    """The segments of an input of ``length`` samples.

    Args:
        seg_length: samples per segment (:func:`segment_length`).
        overlap: share of a segment that overlaps the next (demucs's default is 0.25).
        window_for: the model's window for a segment of that many samples
            (``model.valid_length``: HTDemucs always takes its training length).
    """
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    stride = int((1 - overlap) * seg_length)
    if stride < 1:
        raise ValueError(f"a segment of {seg_length} samples with overlap {overlap} has no stride")
    segments = []
    for index, offset in enumerate(range(0, length, stride)):
        chunk = min(length - offset, seg_length)
        window = int(window_for(chunk))
        segments.append(Segment(index, offset, chunk, offset - (window - chunk) // 2, window))
    return segments



def transition_weight(seg_length: int, power: float = 1.0,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``[seg_length]`` float32: the triangle ``apply_model`` weights a segment's output with."""
    if power < 1:
        raise ValueError("transition_power < 1 leads to weird transitions (demucs refuses it)")
    weight = torch.cat([torch.arange(1, seg_length // 2 + 1, device=device),
                        torch.arange(seg_length - seg_length // 2, 0, -1, device=device)])
    return (weight / weight.max()) ** power


def read_window(x: torch.Tensor, segment: Segment, shift: float | torch.Tensor = 0.0,
                scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The model's input for ``segment``: ``(x - shift) / scale`` over the window, zeros where
    the window runs past either end of ``x`` (demucs pads the normalised mix).

    Args:
        x: ``[C, N]`` float32.
    Returns:
        ``[C, window]`` float32, a new tensor.
    """
    begin, end = max(0, segment.start), min(x.shape[-1], segment.start + segment.window)
    inside = (x[..., begin:end] - shift) / scale
    return torch.nn.functional.pad(inside, (begin - segment.start,
                                            segment.start + segment.window - end))


def divide_by_weight_sum(acc: torch.Tensor, segments: tp.Sequence[Segment],
                         weight: torch.Tensor) -> torch.Tensor:
    """Divide the overlap-added ``acc`` (``[C, N]``, in place) by the sum of the weights of the
    segments covering each sample: ``apply_model``'s ``sum_weight``, summed in the same order,
    computed one stride at a time instead of in a buffer of the input's length."""
    first = 0
    for k, segment in enumerate(segments):
        start = segment.offset
        end = segments[k + 1].offset if k + 1 < len(segments) else acc.shape[-1]
        while segments[first].offset + segments[first].length <= start:
            first += 1
        total = torch.zeros(end - start, dtype=weight.dtype)
        for covering in segments[first:k + 1]:
            lo = max(start, covering.offset)
            hi = min(end, covering.offset + covering.length)
            total[lo - start:hi - start] += weight[lo - covering.offset:hi - covering.offset]
        acc[:, start:end] /= total
    return acc
