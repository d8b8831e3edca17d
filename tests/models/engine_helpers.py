"""Clips, instructions and drivers shared by the engine tests."""
from __future__ import annotations

import numpy as np
import torch

from models import audio, codec

ADD = "Music piece. Instruct: Add Drums."
ONLY = "Music piece. Instruct: Only Bass."
NO = "Music piece. Instruct: No Guitar."
# Short windows keep the tests fast; the logic is the same at 5 s.
SMALL = dict(window_seconds=1.0, prompt_seconds=0.4)


def clip(seconds: float, seed: int) -> np.ndarray:
    """`[1, N]` float32 at 32 kHz: a tone (its pitch depends on `seed`) plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(32000 * seconds)) / 32000
    tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)[None]


def input_codes(model, wav: np.ndarray) -> torch.Tensor:
    """`[1, K, T]` codes of a 32 kHz clip."""
    return codec.encode(model.codec, audio.to_codec_input(wav, 32000, model.sample_rate))


def run_all(engine) -> None:
    """Step the engine by hand until it is idle."""
    while engine.step():
        pass
