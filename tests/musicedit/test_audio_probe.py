import os

import numpy as np
import pytest
import soundfile as sf

from musicedit.audio_probe import AudioLimits, probe_audio
from musicedit.errors import InvalidAudio, UnsupportedAudio

LIMITS = AudioLimits(min_seconds=0.5, max_seconds=30.0, max_sample_rate=192_000, max_channels=8,
                     silence_peak_threshold=1e-4)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_accepted_formats_are_probed(audio_factory, fmt):
    path = audio_factory(seconds=1.5, sample_rate=44100, channels=2, format=fmt)
    info = probe_audio(path, LIMITS)
    assert (info.format, info.sample_rate, info.channels) == (fmt, 44100, 2)
    assert info.duration_seconds == pytest.approx(1.5, abs=0.06)


def test_empty_file_is_unsupported(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedAudio, match="empty"):
        probe_audio(path, LIMITS)


def test_random_bytes_named_wav_are_unsupported(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(os.urandom(50_000))
    with pytest.raises(UnsupportedAudio, match="WAV, FLAC, OGG"):
        probe_audio(path, LIMITS)


def test_truncated_wav_is_unsupported(audio_factory, tmp_path):
    data = audio_factory(seconds=2.0).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedAudio, match="truncated"):
        probe_audio(cut, LIMITS)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(data[:30])
    with pytest.raises(UnsupportedAudio):
        probe_audio(header_only, LIMITS)


def test_mp3_bytes_are_trusted_over_a_wav_name(audio_factory, tmp_path):
    mp3 = audio_factory(seconds=1.0, format="MP3")
    disguised = tmp_path / "song.wav"
    disguised.write_bytes(mp3.read_bytes())
    assert probe_audio(disguised, LIMITS).format == "MP3"


def test_zero_length_audio_is_too_short(audio_factory):
    with pytest.raises(InvalidAudio, match=r"lasts 0.000 s; the minimum is 0.5 s"):
        probe_audio(audio_factory(seconds=0.0), LIMITS)


def test_too_short_and_too_long(audio_factory):
    with pytest.raises(InvalidAudio, match="minimum is 0.5 s"):
        probe_audio(audio_factory(seconds=0.2), LIMITS)
    with pytest.raises(InvalidAudio, match="maximum is 30.0 s"):
        probe_audio(audio_factory(seconds=31.0, sample_rate=8000, channels=1), LIMITS)


def test_silence_is_rejected(audio_factory):
    with pytest.raises(InvalidAudio, match="silent"):
        probe_audio(audio_factory(content="silence"), LIMITS)


@pytest.mark.parametrize("content", ["nan", "inf"])
def test_non_finite_float_samples_are_rejected(audio_factory, content):
    with pytest.raises(InvalidAudio, match="NaN or infinite"):
        probe_audio(audio_factory(content=content), LIMITS)


def test_sample_rate_over_limit(audio_factory):
    with pytest.raises(InvalidAudio, match="384000 Hz is over the limit of 192000 Hz"):
        probe_audio(audio_factory(seconds=1.0, sample_rate=384_000, channels=1), LIMITS)


def test_channel_limit_is_inclusive(audio_factory):
    eight = audio_factory(seconds=1.0, sample_rate=8000, channels=8)
    assert probe_audio(eight, LIMITS).channels == 8
    with pytest.raises(InvalidAudio, match="9 channels; at most 8"):
        probe_audio(audio_factory(seconds=1.0, sample_rate=8000, channels=9), LIMITS)
    stereo_only = AudioLimits(0.5, 30.0, 192_000, 2, 1e-4)
    with pytest.raises(InvalidAudio, match="8 channels; at most 2"):
        probe_audio(eight, stereo_only)


def test_long_files_are_scanned_in_blocks(tmp_path):
    # 25 s at 48 kHz stereo; the NaN sits in the last block, so the whole file must be read.
    path = tmp_path / "long.wav"
    data = np.full((25 * 48000, 2), 0.1, dtype="float32")
    data[-1, 1] = np.nan
    sf.write(str(path), data, 48000, subtype="FLOAT")
    with pytest.raises(InvalidAudio, match="NaN"):
        probe_audio(path, LIMITS)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_length_is_the_decoded_length(audio_factory, fmt):
    # the probe reads only the head and the tail of most files: its length must still be
    # what a full decode (the worker's read_audio) gets
    path = audio_factory(seconds=3.0, sample_rate=44100, channels=2, format=fmt)
    decoded, _ = sf.read(str(path), dtype="float32", always_2d=True)
    info = probe_audio(path, LIMITS)
    assert info.frames == decoded.shape[0]
    assert info.peak >= LIMITS.silence_peak_threshold


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_a_long_silent_intro_is_not_silence(tmp_path, fmt):
    path = tmp_path / f"intro.{fmt.lower()}"
    data = np.zeros((6 * 44100, 2), dtype="float32")
    data[-44100:] = np.random.default_rng(0).standard_normal((44100, 2)) * 0.1  # last second
    sf.write(str(path), data, 44100, format=fmt)
    assert probe_audio(path, LIMITS).duration_seconds == pytest.approx(6.0, abs=0.06)


def test_an_mp3_shorter_than_its_header_gets_its_real_length(audio_factory, tmp_path):
    # LAME's Info header declares 10 s; only the first ~30 % of the frames are present
    data = audio_factory(seconds=10.0, sample_rate=44100, channels=2, format="MP3").read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) * 3 // 10])
    with sf.SoundFile(str(cut)) as handle:
        assert handle.frames == 441000
    decoded, _ = sf.read(str(cut), dtype="float32", always_2d=True)
    info = probe_audio(cut, LIMITS)
    assert info.frames == decoded.shape[0] < 441000 * 0.35
    with pytest.raises(InvalidAudio, match="minimum is 5.0 s"):
        probe_audio(cut, AudioLimits(5.0, 30.0, 192_000, 8, 1e-4))


def test_a_truncated_flac_is_corrupt(audio_factory, tmp_path):
    data = audio_factory(seconds=10.0, sample_rate=44100, channels=2, format="FLAC").read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedAudio, match="corrupt"):
        probe_audio(cut, LIMITS)
