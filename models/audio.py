"""Audio in and out of the model: decode files, resample to the codec's rate, encode/decode codes.

File validation (format, limits, silence) is :func:`musicedit.audio_probe.probe_audio`, shared with
the gateway; here we turn an accepted file into the codec's input (`models.codec` turns it into
codes and back, in chunks) and write results, and refuse again what the model cannot edit (no samples, NaN/inf, silence), so that callers of the
model path (the reference edit, the engine) get the same clear errors without the probe.
"""
from __future__ import annotations

import math
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musicedit.errors import InvalidAudio, UnsupportedAudio

OUTPUT_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16")}
# Below this absolute peak the input is silent (the default of MUSICEDIT_SILENCE_PEAK_THRESHOLD).
SILENCE_PEAK_THRESHOLD = 1e-4


def read_audio(source: str | Path | tp.BinaryIO) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG/MP3 (whatever libsndfile reads) to float32 ``[C, N]`` and its rate."""
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise UnsupportedAudio(f"cannot decode the audio: {exc}. Send WAV, FLAC, OGG or MP3.") from exc
    return np.ascontiguousarray(data.T), int(rate)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every sample of ``x`` is finite, without a copy of ``x``."""
    low, high = torch.aminmax(x)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def checked_samples(wav: np.ndarray | torch.Tensor,
                    silence_peak_threshold: float = SILENCE_PEAK_THRESHOLD) -> torch.Tensor:
    """``wav`` as a float32 ``[C, N]`` tensor (no copy when it already is one), refused when
    the model cannot edit it.

    Raises:
        InvalidAudio: empty, non-finite or silent samples.
    """
    x = torch.as_tensor(wav, dtype=torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.numel() == 0 or x.shape[-1] == 0:
        raise InvalidAudio("the audio has no samples")
    # One reduction, no copy of the samples (a 5-minute input is 100 MB): NaN propagates
    # to both ends of the range, an infinity shows at one of them.
    if not all_finite(x):
        raise InvalidAudio("the audio contains NaN or infinite samples")
    low, high = torch.aminmax(x)
    peak = max(-float(low), float(high))
    if peak < silence_peak_threshold:
        raise InvalidAudio(f"the audio is silent (peak {peak:.2e}, threshold "
                           f"{silence_peak_threshold:.0e} of full scale): send a clip with "
                           "audible content")
    return x


def to_codec_input(wav: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int,
                   silence_peak_threshold: float = SILENCE_PEAK_THRESHOLD) -> torch.Tensor:
    """Mix down to mono and resample.

    Args:
        wav: ``[C, N]`` float samples in [-1, 1].
        sample_rate: rate of ``wav``.
        target_rate: the codec's rate (32 kHz for MusicGen).
        silence_peak_threshold: inputs whose absolute peak is below this are silent.
    Returns:
        ``[1, 1, N']`` float32 at ``target_rate``.
    Raises:
        InvalidAudio: empty, non-finite or silent samples.
    """
    import julius
    x = checked_samples(wav, silence_peak_threshold).mean(dim=0, keepdim=True)
    if sample_rate != target_rate:
        x = julius.resample_frac(x, sample_rate, target_rate)
    return x.unsqueeze(0)


class NonFiniteAudio(RuntimeError):
    """The codec decoded codes to NaN or infinite samples (broken weights or an fp16 overflow):
    the result would be noise or silence, so it is not delivered."""


def write_audio(path: str | Path | tp.BinaryIO, wav: torch.Tensor, sample_rate: int,
                output_format: str = "wav", output_rate: int | None = None) -> None:
    """Write ``[1, N]`` or ``[1, 1, N]`` audio as 16-bit WAV or FLAC, resampled to
    ``output_rate`` when given (for example the input's own rate)."""
    import julius
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    x = wav.detach().float().cpu().reshape(1, -1)
    if output_rate and output_rate != sample_rate:
        x = julius.resample_frac(x, sample_rate, output_rate)
        sample_rate = output_rate
    fmt, subtype = OUTPUT_FORMATS[output_format]
    sf.write(path, x.clamp(-1, 1).squeeze(0).numpy(), sample_rate, format=fmt, subtype=subtype)
