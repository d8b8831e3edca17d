"""The file a user gets back: the input's shape by default, the input itself outside an edited
range (bit-exact in 16-bit PCM), smooth transitions inside the range."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from models.audio import compose_result, read_audio, write_samples


def _stereo_pcm16(path, seconds=4.0, rate=44100):
    t = np.arange(int(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * 220 * t)
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 0.5)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm


def _edited(seconds: float, rate: int = 32000) -> torch.Tensor:
    t = torch.arange(int(rate * seconds)) / rate
    return (0.25 * torch.sin(2 * torch.pi * 523.25 * t)).view(1, -1)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_outside_the_range_the_result_is_the_input_bit_for_bit(tmp_path, fmt):
    pcm = _stereo_pcm16(tmp_path / "in.wav")
    wav, rate = read_audio(tmp_path / "in.wav")
    start, end = 1.013, 2.507
    edited = _edited(end - 1.0 + 0.1)  # frames from 1.00 s (50 frames/s) past the range end
    out, out_rate = compose_result(edited, 32000, 1.0, wav, rate, (start, end))
    write_samples(tmp_path / f"out.{fmt}", out, out_rate, fmt)
    back, back_rate = sf.read(tmp_path / f"out.{fmt}", dtype="int16")
    assert back_rate == 44100 and back.shape == pcm.shape
    a, b = round(start * 44100), round(end * 44100)
    assert np.array_equal(back[:a], pcm[:a]) and np.array_equal(back[b:], pcm[b:])
    assert not np.array_equal(back[a:b], pcm[a:b])
    # the transitions lie inside the range and are smooth (no jump larger than the signals')
    step = np.abs(np.diff(back.astype(np.int32), axis=0)).max()
    assert step < 0.1 * 32767


def test_a_whole_clip_edit_comes_back_in_the_inputs_shape_or_the_one_asked_for(tmp_path):
    _stereo_pcm16(tmp_path / "in.wav", seconds=2.0, rate=22050)
    wav, rate = read_audio(tmp_path / "in.wav")
    edited = _edited(2.0)
    out, out_rate = compose_result(edited, 32000, 0.0, wav, rate)
    assert out_rate == 22050 and out.shape == wav.shape
    assert np.allclose(out[0], out[1])  # the model's mono audio on both channels
    out, out_rate = compose_result(edited, 32000, 0.0, wav, rate, output_rate=48000,
                                   output_channels=1)
    assert out_rate == 48000 and out.shape == (1, 96000)


def test_a_range_at_the_end_of_the_clip_is_filled_to_its_end():
    wav = np.zeros((1, 32000), dtype=np.float32)
    edited = _edited(0.49)  # shorter than the range: the clip's last partial frame
    out, _ = compose_result(edited, 32000, 0.5, wav, 32000, (0.5, 1.0))
    assert out.shape == (1, 32000) and np.abs(out[0, 16000:31000]).max() > 0.1
    assert not np.isnan(out).any()
