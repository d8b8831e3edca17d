"""Probe an uploaded audio file without torch: format, rate, channels, duration, content checks.

The format is decided by the bytes (libsndfile sniffs the header), never by the declared
content type or the file name: an MP3 uploaded as `audio/wav` is probed, and accepted, as MP3;
random bytes named `.wav` are rejected as not audio. Samples are read in fixed-size blocks,
so memory stays bounded whatever the duration.

What an accepted file is guaranteed to be (`probe_audio`), for every format:
- an accepted format, sample rate and channel count (from the header);
- a length within [min_seconds, max_seconds] as libsndfile decodes it: libsndfile never
  returns more frames than the header declares, and the stream is decoded up to its
  declared end (else the file is decoded in full and its real length is used);
- not silent: some sample reaches `silence_peak_threshold` (a silent file is read in full).

Only float WAV (FLOAT/DOUBLE subtypes) can store NaN/inf samples without any decoding, and
it costs no decoding to read: it is read in full, every sample checked. Every other file is
read from the start only until its first audible block, plus its last block (a bounded
scan: decoding a whole 10 s MP3 took half the gateway's CPU per upload). Those blocks are
checked for NaN/inf too; the rest is not decoded here, so a compressed stream whose decoder
yields NaN/inf or fails in the middle (possible only in a crafted file) fails later, in the
worker: `read_audio` and `to_codec_input` reject it and the job fails with that message.
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
# IANA media types the stored inputs carry. WAV is `audio/vnd.wave` (RFC 2361), not the
# informal `audio/wav`: SeaweedFS gzips every object it sees as `audio/wav`/`audio/wave`
# (also when sniffed from an `application/octet-stream` body), ~2 ms of its CPU per 640 kB
# upload for a 5 % smaller object.
MEDIA_TYPES = {"WAV": "audio/vnd.wave", "FLAC": "audio/flac", "OGG": "audio/ogg",
               "MP3": "audio/mpeg"}
BLOCK_FRAMES = 65536
FIRST_BLOCK_FRAMES = 8192  # most clips are audible within their first 0.2 s
TAIL_FRAMES = 1024
FULL_SCAN_SUBTYPES = {"FLOAT", "DOUBLE"}  # sample formats that can hold NaN/inf


@dataclass(frozen=True)
class AudioInfo:
    """What the probe learned about a file; `peak` is the largest absolute sample value of
    the blocks the probe read (at least the silence threshold for an accepted file)."""

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
    def from_settings(cls, settings: Settings) -> AudioLimits:
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

    Raises:
        UnsupportedAudio: not decodable, not an accepted format, or truncated.
        InvalidAudio: decodes but breaks a limit, is silent or has NaN/inf samples.
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
        subtype = handle.subtype
        if declared == 0 or subtype in FULL_SCAN_SUBTYPES:
            frames, peak = _scan(handle, sample_rate, limits)
        else:
            frames, peak = _bounded_scan(handle, path, declared, sample_rate, limits)
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
    return AudioInfo(fmt, subtype, sample_rate, channels, frames, duration, peak)


def _scan(
    handle: sf.SoundFile, sample_rate: int, limits: AudioLimits, until_audible: bool = False
) -> tuple[int, float]:
    """Read blocks from the current position to the end (or, with `until_audible`, up to the
    first block whose peak reaches the silence threshold): count frames, track the peak,
    reject non-finite samples.

    Returns:
        (frames read, peak).
    """
    frames, peak = 0, 0.0
    size = FIRST_BLOCK_FRAMES if until_audible else BLOCK_FRAMES
    try:
        while True:
            block = handle.read(size, dtype="float32", always_2d=True)
            size = BLOCK_FRAMES
            if block.shape[0] == 0:
                break
            frames += block.shape[0]
            if frames / sample_rate > limits.max_seconds:
                raise InvalidAudio(_too_long(frames / sample_rate, limits, at_least=True))
            _check_finite(block)
            peak = max(peak, float(np.abs(block).max()))
            if until_audible and peak >= limits.silence_peak_threshold:
                break
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _corrupt(exc) from exc
    return frames, peak


def _bounded_scan(
    handle: sf.SoundFile, path: Path, declared: int, sample_rate: int, limits: AudioLimits
) -> tuple[int, float]:
    """Decode until the first audible block, then the last `TAIL_FRAMES` of the declared
    length. A stream that does not reach its declared end is decoded again in full, so its
    real length (or the decoder's error) is what counts, as with a full scan."""
    frames, peak = _scan(handle, sample_rate, limits, until_audible=True)
    if peak < limits.silence_peak_threshold or frames >= declared:
        return frames, peak  # read to the end already
    start = max(frames, declared - TAIL_FRAMES)
    try:
        handle.seek(start)
        tail = handle.read(declared - start, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        tail = None
    if tail is not None and tail.shape[0] == declared - start:
        _check_finite(tail)
        return declared, max(peak, float(np.abs(tail).max()))
    try:
        with sf.SoundFile(str(path)) as again:
            return _scan(again, sample_rate, limits)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _corrupt(exc) from exc


def _check_finite(block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise InvalidAudio(
            "The audio contains NaN or infinite sample values. Re-export it as PCM or "
            "as float with finite values."
        )


def _corrupt(exc: Exception) -> UnsupportedAudio:
    return UnsupportedAudio(
        f"The audio data is corrupt ({_short(exc)}). Send a complete {_ACCEPTED_TEXT} file."
    )


def _too_long(seconds: float, limits: AudioLimits, at_least: bool = False) -> str:
    qualifier = "more than " if at_least else ""
    return (
        f"The audio lasts {qualifier}{seconds:.1f} s; the maximum is {limits.max_seconds} s "
        f"(the minimum {limits.min_seconds} s). Trim the clip."
    )


def _short(exc: Exception) -> str:
    return str(exc).split(": ", 1)[-1][:160]
