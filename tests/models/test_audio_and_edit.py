"""Audio in any common format and rate goes in; the edit is deterministic; the CLI works offline."""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from cli.main import main
from models import audio, codec
from models.reference import InputTooLong, edit
from models.sampling import SamplingParams
from musicedit.errors import InstructionError, InvalidAudio, UnsupportedAudio


def _tone(seconds, rate, channels=1, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x * (0.5 + 0.5 * c / max(channels, 1)) for c in range(channels)])


@pytest.mark.parametrize("fmt, ext, rate, channels", [
    ("WAV", "wav", 44100, 2), ("FLAC", "flac", 48000, 1), ("OGG", "ogg", 22050, 2),
    ("MP3", "mp3", 32000, 1), ("WAV", "wav", 8000, 6),
])
def test_any_format_rate_and_channels_become_32k_mono(tmp_path, fmt, ext, rate, channels):
    path = tmp_path / f"in.{ext}"
    sf.write(path, _tone(1.0, rate, channels).T, rate, format=fmt)
    wav, got_rate = audio.read_audio(path)
    assert got_rate == rate and wav.shape[0] == channels
    x = audio.to_codec_input(wav, rate, 32000)
    assert x.shape[:2] == (1, 1)
    assert abs(x.shape[-1] - 32000) <= 1200  # MP3 frames pad a little
    assert torch.isfinite(x).all() and x.abs().max() > 0.05


def test_bad_audio_gives_clear_errors(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(UnsupportedAudio, match="WAV, FLAC, OGG or MP3"):
        audio.read_audio(junk)
    with pytest.raises(InvalidAudio, match="no samples"):
        audio.to_codec_input(np.zeros((1, 0), np.float32), 32000, 32000)
    bad = _tone(0.5, 32000)
    bad[0, 10] = np.nan
    with pytest.raises(InvalidAudio, match="NaN or infinite"):
        audio.to_codec_input(bad, 32000, 32000)
    with pytest.raises(InvalidAudio, match="silent"):
        audio.to_codec_input(np.full((2, 16000), 5e-5, np.float32), 32000, 32000)


def test_edit_rejects_silence(tiny):
    with pytest.raises(InvalidAudio, match="silent .*send a clip with audible content"):
        edit(tiny, np.zeros((1, 32000), np.float32), 32000, "add drums")


def _write_bad_input(path, kind):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    elif kind == "silent":
        sf.write(path, np.zeros(32000, np.float32), 32000)
    else:
        x = _tone(1.0, 32000)[0]
        x[100] = np.nan
        sf.write(path, x, 32000, subtype="FLOAT")


@pytest.mark.parametrize("kind, message", [
    ("empty", "The uploaded file is empty"),
    ("corrupt", "not audio we can decode"),
    ("silent", "The audio is silent"),
    ("nan", "NaN or infinite"),
])
def test_cli_rejects_bad_input_with_a_clear_message(tmp_path, capsys, kind, message):
    src = tmp_path / "in.wav"
    _write_bad_input(src, kind)
    out = tmp_path / "out.wav"
    assert main(["edit", str(src), "add drums", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Send" in err or "Re-export" in err  # says what to do instead
    assert not out.exists()


@pytest.mark.parametrize("name", ["out.mp3", "out.ogg", "out"])
def test_cli_refuses_output_names_it_cannot_honour(tmp_path, capsys, name):
    """WAV data under an .mp3 name would mislead every player: only .wav and .flac are written."""
    src = tmp_path / "in.wav"
    sf.write(src, _tone(1.0, 32000).T, 32000)
    assert main(["edit", str(src), "add drums", "-o", str(tmp_path / name)]) == 2
    assert "name the output .wav or .flac" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_cli_checks_sampling_parameters_against_the_model(tmp_path, capsys, model_cache,
                                                          tiny_files):
    """top_k's bound is the loaded model's codebook size (64 for tiny), not MusicGen's 2048."""
    src = tmp_path / "in.wav"
    sf.write(src, _tone(1.0, 32000).T, 32000)
    assert main(["edit", str(src), "add drums", "-o", str(tmp_path / "out.wav"), "--top-k", "-1",
                 "--model", "tiny", "--cache-dir", str(model_cache), "--device", "cpu"]) == 2
    assert "values above 64 keep every token" in capsys.readouterr().err


def test_codes_round_trip_shapes(tiny):
    x = audio.to_codec_input(_tone(1.0, 32000), 32000, 32000)
    codes = codec.encode(tiny.codec, x)
    assert codes.shape == (1, tiny.lm.num_codebooks, 50)  # 50 frames/s, as MusicGen
    out = codec.decode(tiny.codec, codes, num_samples=x.shape[-1])
    assert out.shape == x.shape


def test_audio_the_codec_decodes_to_nan_is_never_returned(tiny):
    """Broken codec weights (or an fp16 overflow) must fail the job, not deliver noise."""
    codes = codec.encode(tiny.codec, audio.to_codec_input(_tone(1.0, 32000), 32000, 32000))
    broken = copy.deepcopy(tiny.codec)
    with torch.no_grad():
        next(broken.decoder.parameters()).fill_(float("nan"))
    with pytest.raises(audio.NonFiniteAudio, match="NaN or infinite"):
        codec.decode(broken, codes)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_write_at_model_rate_or_input_rate(tmp_path, fmt):
    wav = torch.from_numpy(_tone(1.0, 32000))
    audio.write_audio(tmp_path / f"a.{fmt}", wav, 32000, fmt)
    audio.write_audio(tmp_path / f"b.{fmt}", wav, 32000, fmt, output_rate=44100)
    assert sf.info(tmp_path / f"a.{fmt}").samplerate == 32000
    info = sf.info(tmp_path / f"b.{fmt}")
    assert info.samplerate == 44100 and abs(info.frames - 44100) <= 2


def test_edit_is_deterministic_per_seed_and_keeps_duration(tiny):
    wav = _tone(2.0, 44100, channels=2)
    a = edit(tiny, wav, 44100, "add drums", SamplingParams(seed=11))
    b = edit(tiny, wav, 44100, "Music piece. Instruct: Add Drums.", SamplingParams(seed=11))
    c = edit(tiny, wav, 44100, "add drums", SamplingParams(seed=12))
    assert a.instruction == "Music piece. Instruct: Add Drums."
    assert torch.equal(a.codes, b.codes) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.codes, c.codes)
    assert a.audio.shape == (1, 64000)
    assert torch.isfinite(a.audio).all()


def test_greedy_edit_is_seed_independent(tiny):
    wav = _tone(1.0, 32000)
    a = edit(tiny, wav, 32000, "only bass", SamplingParams(seed=1, top_k=1))
    b = edit(tiny, wav, 32000, "only bass", SamplingParams(seed=2, top_k=1))
    assert torch.equal(a.codes, b.codes)


def test_edit_rejects_unknown_instruction_and_long_input(tiny):
    with pytest.raises(InstructionError, match="Drums, Bass, Piano, Guitar"):
        edit(tiny, _tone(1.0, 32000), 32000, "make it jazzier")
    with pytest.raises(InputTooLong, match="at most 5 s"):
        edit(tiny, _tone(6.0, 32000), 32000, "add drums")


def test_cli_edits_a_file_offline(tmp_path, model_cache, tiny_files):
    """A chained range edit of a 48 kHz stereo file: the result is the input outside the
    range, bit for bit, in the input's shape; `--output-rate`/`--output-channels` reshape."""
    src = tmp_path / "in.wav"
    sf.write(src, _tone(1.5, 48000, 2).T, 48000, subtype="PCM_16")
    out = tmp_path / "out.flac"
    cmd = [sys.executable, "-m", "cli", "edit", str(src), "replace the guitar with piano",
           "-o", str(out), "--model", "tiny", "--cache-dir", str(model_cache), "--seed", "3",
           "--top-k", "20", "--cfg", "2.5", "--start", "0.5", "--end", "1.25"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "No Guitar. | Music piece. Instruct: Add Piano." in proc.stdout
    info = sf.info(out)
    assert info.samplerate == 48000 and info.channels == 2 and info.format == "FLAC"
    assert abs(info.duration - 1.5) < 0.01
    original, _ = sf.read(src, dtype="int16")
    edited, _ = sf.read(out, dtype="int16")
    assert np.array_equal(edited[:24000], original[:24000])
    assert np.array_equal(edited[60000:], original[60000:])
    reshaped = tmp_path / "mono.wav"
    shaped = subprocess.run(cmd[:5] + ["Add drums", "-o", str(reshaped)] + cmd[8:14]
                            + ["--output-rate", "16000", "--output-channels", "1"],
                            capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert shaped.returncode == 0, shaped.stderr
    assert (sf.info(reshaped).samplerate, sf.info(reshaped).channels) == (16000, 1)
    bad = subprocess.run(cmd[:5] + ["make it louder"] + cmd[6:], capture_output=True, text=True,
                         timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "Supported instructions" in bad.stderr


def test_cli_edits_a_long_file_at_full_length(tmp_path, model_cache, tiny_files):
    """Past the 5 s window the CLI edits window by window and returns the whole song."""
    src = tmp_path / "long.wav"
    sf.write(src, _tone(12.3, 44100, 2).T, 44100)
    out = tmp_path / "long_out.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "edit", str(src), "remove the bass", "-o", str(out),
         "--model", "tiny", "--cache-dir", str(model_cache)],
        capture_output=True, text=True, timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    info = sf.info(out)
    assert (info.samplerate, info.channels) == (44100, 2) and abs(info.duration - 12.3) < 0.01
    data, _ = sf.read(out)
    assert np.isfinite(data).all() and np.abs(data).max() > 0


def test_console_script_is_installed_and_shares_the_api_defaults(monkeypatch):
    """`musicedit` (pyproject's console script, in the venv's bin) runs; the CLI's sampling
    defaults are the API's and the engine's."""
    from pathlib import Path

    from cli import edit as edit_command
    from cli import main as cli
    from musicedit.jobs import SamplingParams as ApiParams

    script = Path(sys.executable).parent / "musicedit"
    assert script.is_file(), "pip install -e . (make setup) installs the musicedit script"
    out = subprocess.run([str(script), "edit", "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "--top-k" in out and "--cfg" in out and ".wav or .flac" in out
    api, engine = ApiParams(), SamplingParams()
    for name in ("top_k", "top_p", "temperature", "cfg_coef"):
        assert getattr(api, name) == getattr(engine, name), name
    parser_defaults = {}

    def capture(args):
        parser_defaults.update(vars(args))
        return 0

    monkeypatch.setattr(edit_command, "run", capture)
    assert cli.main(["edit", "in.wav", "add drums", "-o", "out.wav"]) == 0
    assert (parser_defaults["top_k"], parser_defaults["top_p"], parser_defaults["temperature"],
            parser_defaults["cfg"]) == (api.top_k, api.top_p, api.temperature, api.cfg_coef)
