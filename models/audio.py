"""Audio in and out of the model: decode files, resample to the codec's rate, encode/decode codes.

File validation (format, limits, silence) is `musicedit.audio_probe.probe_audio`, shared with
the gateway; here we turn an accepted file into the codec's input (`models.codec` turns it into
codes and back, in chunks) and write results, and refuse again what the model cannot edit (no
samples, NaN/inf, silence), so that callers of the
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
    """Decode WAV/FLAC/OGG/MP3 (whatever libsndfile reads) to float32 `[C, N]` and its rate."""
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise UnsupportedAudio(f"cannot decode the audio: {exc}. Send WAV, FLAC, OGG or MP3."
                               ) from exc
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
        wav: `[C, N]` float samples in [-1, 1].
        sample_rate: rate of `wav`.
        target_rate: the codec's rate (32 kHz for MusicGen).
        silence_peak_threshold: inputs whose absolute peak is below this are silent.
    Returns:
        `[1, 1, N']` float32 at `target_rate`.
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
    """Write `[1, N]` or `[1, 1, N]` audio as 16-bit WAV or FLAC, resampled to
    `output_rate` when given (for example the input's own rate)."""
    import julius
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    x = wav.detach().float().cpu().reshape(1, -1)
    if output_rate and output_rate != sample_rate:
        x = julius.resample_frac(x, sample_rate, output_rate)
        sample_rate = output_rate
    fmt, subtype = OUTPUT_FORMATS[output_format]
    sf.write(path, x.clamp(-1, 1).squeeze(0).numpy(), sample_rate, format=fmt, subtype=subtype)


# Transitions between the input and an edited range (inside the range), at most this long
# and at most a quarter of the range.
CROSSFADE_SECONDS = 0.2
Crossfade = tp.Literal["equal_power", "linear"]


def to_shape(wav: np.ndarray, rate: int, out_rate: int, out_channels: int) -> np.ndarray:
    """`[C, N]` float32 at `rate` -> `[out_channels, N']` at `out_rate` (mono is copied to
    every channel, several channels are averaged to mono). Unchanged when the shape is."""
    x = np.asarray(wav, dtype=np.float32)
    if rate != out_rate:
        import julius
        x = julius.resample_frac(torch.from_numpy(np.ascontiguousarray(x)), rate, out_rate).numpy()
    if x.shape[0] == out_channels:
        return x
    mono = x if x.shape[0] == 1 else x.mean(axis=0, keepdims=True)
    return np.repeat(mono, out_channels, axis=0).astype(np.float32)


def compose_result(edited: torch.Tensor | np.ndarray, model_rate: int,
                   edited_start_seconds: float, original: np.ndarray, input_rate: int,
                   time_range: tuple[float, float] | None = None,
                   output_rate: int | None = None, output_channels: int | None = None,
                   crossfade_seconds: float = CROSSFADE_SECONDS,
                   crossfade: Crossfade = "equal_power") -> tuple[np.ndarray, int]:
    """The file a user gets back: in the input's shape unless asked otherwise.

    A whole-clip edit is the model's audio, resampled and copied to the output's channels,
    as long as the input. A time-range edit is the input outside `[start, end]`, sample for
    sample (bit-exact in 16-bit PCM when the shape is the input's), and the model's audio
    inside, with transitions of at most `crossfade_seconds` (and a quarter of the range)
    inside the range at both ends: equal-power for audio the model regenerated (loosely
    correlated with the input), linear for the separator's (the input minus a stem: the
    rest of the mix is the same signal on both sides, and an equal-power fade would lift it
    by up to 3 dB mid-fade).

    Args:
        edited: `[C_e, M]` (or `[M]`) float at `model_rate`: the engine's audio, starting at
            `edited_start_seconds` of the clip (it covers the range); MusicGen's is mono, the
            separator's has the input's channels.
        original: `[C, N]` float32 input at `input_rate`.
        time_range: `(start, end)` seconds edited, or None for the whole clip.
    Returns:
        `[C', N']` float32 and its rate.
    """
    out_rate = output_rate or input_rate
    channels = output_channels or original.shape[0]
    base = to_shape(original, input_rate, out_rate, channels)
    length = base.shape[-1]
    if isinstance(edited, torch.Tensor):
        edited = edited.detach().float().cpu().numpy()
    edited = np.asarray(edited, dtype=np.float32)
    model = to_shape(edited.reshape(-1, edited.shape[-1]), model_rate, out_rate, channels)
    offset = int(round(edited_start_seconds * out_rate))
    if time_range is None:
        out = np.zeros_like(base)
        usable = min(length, model.shape[-1] + offset) - offset
        out[:, offset:offset + usable] = model[:, :usable]
        return out, out_rate
    start = max(0, int(round(time_range[0] * out_rate)))
    end = min(length, int(round(time_range[1] * out_rate)))
    fade = min(int(round(crossfade_seconds * out_rate)), (end - start) // 4)
    gain = np.ones(end - start, dtype=np.float32)
    if fade:
        ramp = (np.arange(fade, dtype=np.float32) + 0.5) / fade
        if crossfade == "equal_power":
            ramp = np.sin(0.5 * math.pi * ramp)
        gain[:fade] = ramp
        gain[-fade:] = ramp[::-1]
    inside = model[:, max(0, start - offset):max(0, end - offset)]
    if inside.shape[-1] < end - start:  # the model's audio stops at the clip's last frame
        inside = np.pad(inside, ((0, 0), (0, end - start - inside.shape[-1])))
    out = base.copy()
    if crossfade == "equal_power":
        keep = np.sqrt(np.clip(1.0 - gain ** 2, 0.0, 1.0))
    else:
        keep = 1.0 - gain
    out[:, start:end] = base[:, start:end] * keep + inside * gain
    return out, out_rate


def write_samples(path: str | Path | tp.BinaryIO, wav: np.ndarray, sample_rate: int,
                  output_format: str = "wav") -> None:
    """Write `[C, N]` float samples as 16-bit WAV or FLAC (a float32 copy of 16-bit input
    comes back bit-exact)."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    fmt, subtype = OUTPUT_FORMATS[output_format]
    sf.write(path, np.clip(wav, -1.0, 1.0).T, sample_rate, format=fmt, subtype=subtype)
