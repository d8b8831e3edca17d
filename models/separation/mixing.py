"""Stem operations on one separation, and audio in and out of the separator's format.

``remove X`` is the input minus the separated X; ``extract X`` is the separated X. A chain of
operations on one input ("remove the vocals and the drums") needs one separation: the result is
always ``(input if nothing was extracted) + sum_s coef_s * stem_s``, and by linearity the
engine overlap-adds that one combination instead of every stem. The input part is added at
the input's own rate and channels, so ``remove X`` + ``extract X`` is the input to float
rounding, whatever resampling the separator needed.
"""
from __future__ import annotations

import typing as tp
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from musicedit.errors import InstructionError, UnsupportedAudio

StemOperation = tp.Literal["remove", "extract"]
OPERATIONS: tuple[str, ...] = tp.get_args(StemOperation)


class UnsupportedOperation(InstructionError):
    """An operation the separator does not do (it removes and extracts stems; it adds none)."""


class UnknownStem(InstructionError):
    """A stem the loaded separator does not separate."""


@dataclass(frozen=True)
class StemEdit:
    """One operation on one stem, as the API spells stems (``StemEdit("remove", "Vocals")``)."""

    operation: StemOperation
    stem: str


@dataclass(frozen=True)
class StemMix:
    """What a chain of stem edits makes of the input: ``input * keep_input + sum(coef * stem)``.

    Attributes:
        keep_input: the input itself is part of the result (nothing was extracted).
        coefficients: ``{source index: coefficient}``, only the stems that contribute.
    """

    keep_input: bool
    coefficients: dict[int, float]

    def vector(self, num_sources: int) -> torch.Tensor:
        """``[S]`` float32 coefficients over all of the model's sources."""
        coef = torch.zeros(num_sources)
        for index, value in self.coefficients.items():
            coef[index] = value
        return coef


def plan_mix(edits: Sequence[StemEdit], stems: Sequence[str]) -> StemMix:
    """Apply ``edits`` in order to the input, seen as the sum of the model's stems and a
    residual (what the stems miss): ``remove X`` drops X, ``extract X`` keeps only X (or
    nothing, if X was removed before).

    Args:
        stems: the model's stems as the API spells them, in the model's output order.
    Raises:
        UnsupportedOperation: an operation other than remove/extract.
        UnknownStem: a stem the model does not separate.
    """
    if not edits:
        raise ValueError("a separation request needs at least one stem operation")
    index = {stem.lower(): i for i, stem in enumerate(stems)}
    kept = set(range(len(stems)))
    keep_input = True  # the residual: only a remove-only chain keeps it
    for edit in edits:
        if edit.operation not in OPERATIONS:
            raise UnsupportedOperation(
                f"the separator does {' and '.join(OPERATIONS)}, not {edit.operation!r}; "
                "adding a stem runs on Instruct-MusicGen")
        source = index.get(edit.stem.lower())
        if source is None:
            raise UnknownStem(f"the separator does not separate {edit.stem!r}; it "
                                   f"separates {', '.join(stems)}")
        if edit.operation == "remove":
            kept.discard(source)
        else:
            kept &= {source}
            keep_input = False
    if keep_input:
        return StemMix(True, {s: -1.0 for s in range(len(stems)) if s not in kept})
    return StemMix(False, {s: 1.0 for s in sorted(kept)})


def to_separator_input(x: torch.Tensor, sample_rate: int, separator_rate: int,
                       separator_channels: int) -> torch.Tensor:
    """The input as the separator hears it.

    Args:
        x: ``[C, N]`` float32 at ``sample_rate``, C = 1 or ``separator_channels``.
    Returns:
        ``[separator_channels, N']`` at ``separator_rate``: mono is repeated (a view when no
        resampling is needed: no copy of a 44.1 kHz input).
    Raises:
        UnsupportedAudio: a channel count the separator cannot take.
    """
    import julius
    channels = x.shape[0]
    if channels not in (1, separator_channels):
        raise UnsupportedAudio(f"the separator takes mono or {separator_channels}-channel "
                               f"audio, not {channels} channels: downmix it first")
    if sample_rate != separator_rate:
        x = julius.resample_frac(x, sample_rate, separator_rate)
    return x.expand(separator_channels, -1)


def from_separator_output(y: torch.Tensor, separator_rate: int, sample_rate: int,
                          channels: int, length: int) -> torch.Tensor:
    """Separator output back to the input's format.

    Args:
        y: ``[separator_channels, N']`` float32 at ``separator_rate``.
    Returns:
        ``[channels, length]`` float32 at ``sample_rate`` (a mono input gets the average).
    """
    import julius
    if sample_rate != separator_rate:
        y = julius.resample_frac(y, separator_rate, sample_rate, output_length=length)
    if channels == 1:
        y = y.mean(dim=0, keepdim=True)
    return y
