"""Probe an uploaded audio file without torch: format, rate, channels, duration, content checks.

The format is decided by the bytes (libsndfile sniffs the header), never by the declared
content type or the file name: an MP3 uploaded as `audio/wav` is probed, and accepted, as MP3;
random bytes named `.wav` are rejected as not audio. Samples are scanned in fixed-size blocks,
so memory stays bounded whatever the duration.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from musicedit.errors import InvalidAudio, UnsupportedAudio
from musicedit.settings import Settings

ACCEPTED_FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "FLAC": "FLAC", "OGG": "OGG", "MP3": "MP3"}
_ACCEPTED_TEXT = "WAV, FLAC, OGG (Vorbis/Opus) or MP3"
BLOCK_FRAMES = 65536


@dataclass(frozen=True)
class AudioInfo:
    """What the probe learned about a file; `peak` is the largest absolute sample value."""

    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    duration_seconds: float
    peak: float


@dataclass(frozen=True)
class AudioLimits:
    """The limits an upload must meet (taken from `Settings`)."""

    min_seconds: float
    max_seconds: float
    max_sample_rate: int
    max_channels: int
    silence_peak_threshold: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "AudioLimits":
        return cls(
            min_seconds=settings.min_input_seconds,
            max_seconds=settings.max_input_seconds,
            max_sample_rate=settings.max_sample_rate,
            max_channels=settings.max_channels,
            silence_peak_threshold=settings.silence_peak_threshold,
        )


def _check_wav_not_truncated(path: Path) -> None:
    """Reject a RIFF/WAVE file whose `data` chunk is shorter than its header declares.

    libsndfile silently decodes what is there; a cut-off upload should be re-sent instead.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mean "unknown" (streamed writers); nothing to compare.
                if chunk_size not in (0, 0xFFFFFFFF) and offset + 8 + chunk_size > size:
                    raise UnsupportedAudio(
                        f"The WAV file is truncated: its header declares {chunk_size} bytes "
                        f"of audio but only {size - offset - 8} are present. Upload the "
                        "complete file."
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def probe_audio(path: str | Path, limits: AudioLimits) -> AudioInfo:
    """Probe `path` and enforce `limits`.

    Raises `UnsupportedAudio` (not decodable / not an accepted format / truncated) or
    `InvalidAudio` (decodes but breaks a limit, is silent or has NaN/inf samples).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise UnsupportedAudio(f"The uploaded file is empty. Send a {_ACCEPTED_TEXT} file.")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise UnsupportedAudio(
            f"The file is not audio we can decode ({_short(exc)}). Send a {_ACCEPTED_TEXT} file."
        ) from exc
    with handle:
        fmt = ACCEPTED_FORMATS.get(handle.format)
        if fmt is None:
            raise UnsupportedAudio(
                f"Audio format {handle.format} is not supported. Send a {_ACCEPTED_TEXT} file."
            )
        if fmt == "WAV":
            _check_wav_not_truncated(path)
        sample_rate, channels = int(handle.samplerate), int(handle.channels)
        if sample_rate > limits.max_sample_rate:
            raise InvalidAudio(
                f"Sample rate {sample_rate} Hz is over the limit of {limits.max_sample_rate} Hz. "
                "Resample the file (44100 or 48000 Hz are fine)."
            )
        if channels > limits.max_channels:
            raise InvalidAudio(
                f"The file has {channels} channels; at most {limits.max_channels} are accepted. "
                "Downmix it to stereo or mono."
            )
        declared = handle.frames if handle.frames and handle.frames > 0 else 0
        if declared / sample_rate > limits.max_seconds:
            raise InvalidAudio(_too_long(declared / sample_rate, limits))
        frames, peak = _scan(handle, sample_rate, limits)
    duration = frames / sample_rate
    if duration < limits.min_seconds:
        raise InvalidAudio(
            f"The audio lasts {duration:.3f} s; the minimum is {limits.min_seconds} s "
            f"(the maximum {limits.max_seconds} s). Send a longer clip."
        )
    if peak < limits.silence_peak_threshold:
        raise InvalidAudio(
            f"The audio is silent (peak {peak:.2e}, threshold {limits.silence_peak_threshold:.0e}"
            " of full scale). Send a clip with audible content."
        )
    return AudioInfo(fmt, handle.subtype, sample_rate, channels, frames, duration, peak)


def _scan(handle: sf.SoundFile, sample_rate: int, limits: AudioLimits) -> tuple[int, float]:
    """Read every block: count frames, track the peak, reject non-finite samples."""
    frames, peak = 0, 0.0
    try:
        while True:
            block = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            frames += block.shape[0]
            if frames / sample_rate > limits.max_seconds:
                raise InvalidAudio(_too_long(frames / sample_rate, limits, at_least=True))
            if not np.isfinite(block).all():
                raise InvalidAudio(
                    "The audio contains NaN or infinite sample values. Re-export it as PCM or "
                    "as float with finite values."
                )
            peak = max(peak, float(np.abs(block).max()))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise UnsupportedAudio(
            f"The audio data is corrupt ({_short(exc)}). Send a complete {_ACCEPTED_TEXT} file."
        ) from exc
    return frames, peak


def _too_long(seconds: float, limits: AudioLimits, at_least: bool = False) -> str:
    qualifier = "more than " if at_least else ""
    return (
        f"The audio lasts {qualifier}{seconds:.1f} s; the maximum is {limits.max_seconds} s "
        f"(the minimum {limits.min_seconds} s). Trim the clip."
    )


def _short(exc: Exception) -> str:
    return str(exc).split(": ", 1)[-1][:160]
