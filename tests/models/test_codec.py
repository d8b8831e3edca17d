"""EnCodec in chunks: the one-pass result (no audible seam), with memory flat in the length."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import codec, configs

ONE_PASS = codec.Chunking(chunk_frames=10 ** 6, context_frames=0, crossfade_frames=0)


def _music(seconds: float, rate: int = 32000, seed: int = 0) -> torch.Tensor:
    """`[1, 1, N]`: an amplitude-modulated chord plus noise."""
    t = torch.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    x = sum(0.1 * torch.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    x = x * (1 + 0.5 * torch.sin(2 * np.pi * 0.5 * t))
    x = x + 0.02 * torch.from_numpy(rng.standard_normal(len(t)).astype(np.float32))
    return x.view(1, 1, -1)


def _encodec_32khz():
    """MusicGen's EnCodec dimensions (the `small-random` preset's codec), random weights,
    built by audiocraft's own builder."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf
    torch.manual_seed(0)
    return builders.get_compression_model(
        OmegaConf.create(configs.codec_xp_cfg(configs.ENCODEC_32KHZ))).eval()


def test_a_short_input_is_one_chunk_and_the_one_pass_result(tiny):
    x = _music(1.5)
    chunked = codec.encode(tiny.codec, x)
    assert torch.equal(chunked, codec.encode(tiny.codec, x, ONE_PASS))
    assert torch.equal(codec.decode(tiny.codec, chunked, num_samples=x.shape[-1]),
                       codec.decode(tiny.codec, chunked, x.shape[-1], ONE_PASS))


def test_chunks_cover_every_frame_once_and_none_is_shorter_than_a_crossfade():
    chunking = codec.Chunking(chunk_frames=100, context_frames=20, crossfade_frames=10)
    for total in (1, 139, 140, 141, 250, 1001):
        chunks = list(codec._chunks(total, chunking))
        assert chunks[0][0] == 0 and chunks[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
        assert all(end - start >= 50 or len(chunks) == 1 for start, end, _, _ in chunks)
        assert all(left == max(0, start - 20) and right == min(total, end + 20)
                   for start, end, left, right in chunks)
    with pytest.raises(ValueError, match="crossfade"):
        codec.Chunking(chunk_frames=10, context_frames=2, crossfade_frames=6)


@pytest.mark.slow
def test_chunked_encode_and_decode_match_one_pass_with_encodec_dimensions():
    """12 s in chunks of 3 s (+0.5 s context, 0.2 s crossfade) against one pass: the same
    codes, and audio within float rounding of it, at the boundaries too (no seam)."""
    model = _encodec_32khz()
    x = _music(12.0)
    chunking = codec.Chunking(chunk_frames=150, context_frames=25, crossfade_frames=10)
    one = codec.encode(model, x, ONE_PASS)
    chunked = codec.encode(model, x, chunking)
    assert (one == chunked).float().mean() >= 0.999
    reference = codec.decode(model, one, x.shape[-1], ONE_PASS)
    audio = codec.decode(model, one, x.shape[-1], chunking)
    error = audio - reference
    snr = 10 * torch.log10(reference.pow(2).mean() / error.pow(2).mean().clamp_min(1e-30))
    assert snr > 60, f"chunked decode SNR {snr:.1f} dB"
    hop = codec.hop_length(model)
    for boundary in (150, 300, 450):
        near = error[..., (boundary - 10) * hop:(boundary + 10) * hop].abs().max()
        assert near < 1e-3 * reference.abs().max()


_PEAK_SCRIPT = """
import json, resource, sys, torch
from tests_codec_peak import run
print(json.dumps(run(float(sys.argv[1]))))
"""


@pytest.mark.slow
def test_peak_memory_of_encode_and_decode_is_flat_in_the_input_length(tmp_path):
    """A 300 s input needs no more working memory than a 30 s one (one pass would need ~9 GB
    more): the peak grows only by the input and output buffers themselves. Each length runs
    in a fresh process; the peak is its resident set's high-water mark."""
    script = tmp_path / "tests_codec_peak.py"
    script.write_text(_PEAK_MODULE)
    peaks = {}
    for seconds in (30, 300):
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(seconds)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=1200,
                             env={**os.environ, "PYTHONPATH": f"{tmp_path}:{_repo()}"})
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[seconds] = json.loads(out.stdout.strip().splitlines()[-1])
    growth = peaks[300]["work_peak_bytes"] - peaks[30]["work_peak_bytes"]
    buffers = 2 * 4 * 32000 * 270  # 270 s more of float32 input and output
    assert growth < buffers + 64 * 2 ** 20, peaks


def _repo() -> str:
    from pathlib import Path
    return str(Path(__file__).resolve().parents[2])


_PEAK_MODULE = '''
import resource
import torch
from models import codec, configs


def _rss_peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(seconds):
    from audiocraft.models import builders
    from omegaconf import OmegaConf
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = builders.get_compression_model(
        OmegaConf.create(configs.codec_xp_cfg(configs.ENCODEC_32KHZ))).eval()
    warm = torch.zeros(1, 1, 32000)
    codec.decode(model, codec.encode(model, warm))  # first-call allocations
    x = torch.randn(1, 1, int(32000 * seconds)) * 0.1
    before = _rss_peak()
    codes = codec.encode(model, x)
    out = codec.decode(model, codes, x.shape[-1])
    return {"seconds": seconds, "work_peak_bytes": _rss_peak() - before,
            "frames": codes.shape[-1], "samples": out.shape[-1]}
'''
