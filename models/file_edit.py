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
from typing import Any

import torch

from models.audio import OUTPUT_FORMATS, SILENCE_PEAK_THRESHOLD, read_audio, write_samples
from models.checkpoint import CheckpointError
from models.edit_steps import Handle, StepsProgress, run_steps
from models.engine import EditEngine, EngineConfig
from models.loader import load_model, model_stems
from models.presets import resolve_model
from models.sampling import SamplingParams
from models.separation import (
    SeparationConfig,
    SeparationEngine,
    load_separator,
    resolve_separator,
)
from musicedit.audio_probe import AudioLimits, probe_audio
from musicedit.errors import MusiceditError
from musicedit.instructions import normalize_edit
from musicedit.jobs import (
    OUTPUT_SAMPLE_RATE_MAX,
    OUTPUT_SAMPLE_RATE_MIN,
    NormalizedInstruction,
    time_range_in,
)
from musicedit.routing import Engine, EngineChoice, EngineStems, route

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
    instruction: str  # the templates the model saw
    engines: tuple[str, ...]  # what ran each step
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
    separator: str = "none",
    engine: EngineChoice = "auto",
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    output_rate: int | None = None,
    output_channels: int | None = None,
    max_seconds: float = 300.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> EditedFile:
    """Edit `input_path` as `instruction` says and write the result to `output_path`.

    The instruction may chain steps ("replace the guitar with piano"). Each step runs on the
    engine `musicedit.routing.route` picks (`engine`): the generative model adds stems, the
    separator (when `separator` names one) removes and extracts the stems it knows; the
    generative model is loaded only if a step needs it. Inputs longer than the model's
    window are edited window by window; with `start_seconds`/`end_seconds` only that range
    is edited and the rest is the input, sample for sample. The result is as long as the
    input, at its rate and channel count unless `output_rate`/`output_channels` say
    otherwise, 16-bit, in the format the output's extension names.

    Args:
        model: a preset name (`tiny`, `small-random`, `large`) or a model directory.
        cache_dir: where random presets are written.
        device: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
        separator: `none`, a separator preset (`tiny`, `htdemucs_6s`) or a Demucs file.
        on_progress: called with (frames done, frames total) as decoding advances.

    Raises:
        FileEditRefused: the output name, the input audio, the instruction, the checkpoint or
            the sampling parameters do not allow the edit.
    """
    limits = AudioLimits(min_seconds=_MIN_SECONDS, max_seconds=max_seconds,
                         max_sample_rate=_MAX_SAMPLE_RATE, max_channels=_MAX_CHANNELS,
                         silence_peak_threshold=SILENCE_PEAK_THRESHOLD)
    fmt = output_format(output_path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    try:
        info = probe_audio(input_path, limits)
        files = resolve_model(model, cache_dir)
        loaded_separator = None
        if separator.lower() != "none":  # small: loaded first, its stems route the steps
            loaded_separator = load_separator(resolve_separator(separator, cache_dir), device)
        stems = EngineStems(generative=model_stems(files),
                            separation=loaded_separator.stems if loaded_separator else ())
        steps = normalize_edit(instruction, stems.all)
        engines = route(steps, stems, engine)
        time_range = time_range_in(start_seconds, end_seconds, info.duration_seconds)
        if output_channels is not None and output_channels not in (1, 2):
            raise ValueError(f"output channels must be 1 or 2, got {output_channels}")
        if output_rate is not None and not (
                OUTPUT_SAMPLE_RATE_MIN <= output_rate <= OUTPUT_SAMPLE_RATE_MAX):
            raise ValueError(f"output rate must be {OUTPUT_SAMPLE_RATE_MIN}.."
                             f"{OUTPUT_SAMPLE_RATE_MAX} Hz, got {output_rate}")
        generative = None
        if "generative" in engines:
            # The engine edits any length (5 s windows, each continuing the previous one's
            # output); for one window it computes exactly the reference path
            # (models.reference.edit).
            generative = EditEngine(load_model(files, device=device), EngineConfig(
                max_batch_size=1, max_input_seconds=max_seconds))
    except (MusiceditError, CheckpointError, OSError, ValueError) as exc:
        raise FileEditRefused(str(exc)) from exc
    separation = None
    if loaded_separator is not None and "separation" in engines:
        separation = SeparationEngine(loaded_separator, SeparationConfig(
            max_input_seconds=max_seconds))
    loaded = time.perf_counter()
    wav, rate = read_audio(input_path)
    listed = NormalizedInstruction.from_steps(steps, engines=engines).all_steps
    span = None if time_range is None else (time_range.start_seconds, time_range.end_seconds)
    progress = StepsProgress()
    running = [e for e in (generative, separation) if e is not None]
    for running_engine in running:
        running_engine.start()

    def wait(handle: Handle[Any], _: Engine) -> Any:
        while True:
            try:
                return handle.result(timeout=0.2)
            except TimeoutError:
                if on_progress is not None:
                    on_progress(*progress.value)

    try:  # submit checks the sampling parameters against the model's codebook size
        edited = run_steps("cli", wav, rate, listed, params, generative=generative,
                           separation=separation, wait=wait, progress=progress,
                           time_range=span)
    except (ValueError, MusiceditError) as exc:
        raise FileEditRefused(str(exc)) from exc
    finally:
        for running_engine in running:
            running_engine.stop()
    if on_progress is not None:
        on_progress(*progress.value)
    audio, out_rate = edited.compose(span, output_rate, output_channels)
    write_samples(output_path, audio, out_rate, fmt)
    return EditedFile(path=output_path, input_seconds=info.duration_seconds,
                      instruction=" | ".join(step.text for step in listed),
                      engines=tuple(engines), load_seconds=loaded - started,
                      edit_seconds=time.perf_counter() - loaded)
