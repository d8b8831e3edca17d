"""Edit one audio file on this machine: probe, load the model, run the engine, write the result.

What `musicedit edit` does. Everything that needs no weights (the output name, the input
audio, the instruction against the model's stems) is checked before the model loads, which
can take minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.audio import (
    OUTPUT_FORMATS,
    SILENCE_PEAK_THRESHOLD,
    compose_result,
    read_audio,
    write_samples,
)
from models.checkpoint import CheckpointError
from models.engine import EditEngine, EditRequest, EngineConfig
from models.loader import load_model, model_stems
from models.presets import resolve_model
from models.sampling import SamplingParams
from musicedit.audio_probe import AudioLimits, probe_audio
from musicedit.errors import MusiceditError
from musicedit.instructions import normalize_edit
from musicedit.jobs import OUTPUT_SAMPLE_RATE_MAX, OUTPUT_SAMPLE_RATE_MIN, time_range_in

# What an offline edit accepts: anything soundfile decodes, however many channels or Hz.
_MIN_SECONDS = 0.05
_MAX_SAMPLE_RATE = 768_000
_MAX_CHANNELS = 64


class FileEditRefused(Exception):
    """The edit cannot be made as asked; the message says what to change."""


@dataclass(frozen=True)
class EditedFile:
    """What `edit_file` wrote."""

    path: Path
    input_seconds: float
    instruction: str  # the template the model saw
    load_seconds: float
    edit_seconds: float


def output_format(output: Path) -> str:
    """The output format the file's extension names (`.wav` -> `wav`).

    Raises:
        FileEditRefused: the extension is not a format edits are written in.
    """
    suffix = output.suffix.lower().lstrip(".")
    if suffix not in OUTPUT_FORMATS:
        raise FileEditRefused(
            f"cannot write {output.name!r}: edits are written as "
            f"{' or '.join(f.upper() for f in OUTPUT_FORMATS)}; name the output "
            f"{' or '.join(f'.{f}' for f in OUTPUT_FORMATS)}")
    return suffix


def edit_file(
    input_path: Path,
    instruction: str,
    output_path: Path,
    *,
    model: str,
    cache_dir: Path,
    params: SamplingParams,
    device: str = "auto",
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    output_rate: int | None = None,
    output_channels: int | None = None,
    max_seconds: float = 300.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> EditedFile:
    """Edit `input_path` as `instruction` says and write the result to `output_path`.

    The instruction may chain steps ("replace the guitar with piano"). Inputs longer than
    the model's window are edited window by window; with `start_seconds`/`end_seconds` only
    that range is edited and the rest is the input, sample for sample. The result is as long
    as the input, at its rate and channel count unless `output_rate`/`output_channels` say
    otherwise, 16-bit, in the format the output's extension names.

    Args:
        model: a preset name (`tiny`, `small-random`, `large`) or a model directory.
        cache_dir: where random presets are written.
        device: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
        on_progress: called with (frames done, frames total) as decoding advances.

    Raises:
        FileEditRefused: the output name, the input audio, the instruction, the checkpoint or
            the sampling parameters do not allow the edit.
    """
    limits = AudioLimits(min_seconds=_MIN_SECONDS, max_seconds=max_seconds,
                         max_sample_rate=_MAX_SAMPLE_RATE, max_channels=_MAX_CHANNELS,
                         silence_peak_threshold=SILENCE_PEAK_THRESHOLD)
    fmt = output_format(output_path)
    try:
        info = probe_audio(input_path, limits)
        files = resolve_model(model, cache_dir)
        steps = normalize_edit(instruction, model_stems(files))
        time_range = time_range_in(start_seconds, end_seconds, info.duration_seconds)
        if output_channels is not None and output_channels not in (1, 2):
            raise ValueError(f"output channels must be 1 or 2, got {output_channels}")
        if output_rate is not None and not (
                OUTPUT_SAMPLE_RATE_MIN <= output_rate <= OUTPUT_SAMPLE_RATE_MAX):
            raise ValueError(f"output rate must be {OUTPUT_SAMPLE_RATE_MIN}.."
                             f"{OUTPUT_SAMPLE_RATE_MAX} Hz, got {output_rate}")
    except (MusiceditError, CheckpointError, OSError, ValueError) as exc:
        raise FileEditRefused(str(exc)) from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    try:
        loaded_model = load_model(files, device=device)
    except CheckpointError as exc:
        raise FileEditRefused(str(exc)) from exc
    loaded = time.perf_counter()
    # The engine edits any length (5 s windows, each continuing the previous one's output);
    # for one window it computes exactly the reference path (models.reference.edit).
    engine = EditEngine(loaded_model, EngineConfig(max_batch_size=1, max_input_seconds=max_seconds))
    wav, rate = read_audio(input_path)
    engine.start()
    span = None if time_range is None else (time_range.start_seconds, time_range.end_seconds)
    templates = tuple(step.text for step in steps)
    try:  # submit checks the sampling parameters against the model's codebook size
        handle = engine.submit(EditRequest("cli", wav, rate, templates, params, on_progress,
                                           time_range=span))
        result = handle.result()
    except (ValueError, MusiceditError) as exc:
        raise FileEditRefused(str(exc)) from exc
    finally:
        engine.stop()
    audio, out_rate = compose_result(result.audio, result.sample_rate,
                                     result.frame_range[0] / loaded_model.frame_rate, wav, rate,
                                     span, output_rate, output_channels)
    write_samples(output_path, audio, out_rate, fmt)
    return EditedFile(path=output_path, input_seconds=info.duration_seconds,
                      instruction=" | ".join(templates), load_seconds=loaded - started,
                      edit_seconds=time.perf_counter() - loaded)
