"""A job's progress total, known before the engine encodes a single frame.

The engine counts progress in codec frames of the edited clip; it reports its total only
once the clip is encoded, which for a long input takes a while. The worker computes the same
number from the decoded input's length, so the job shows `frames_total` as soon as it starts.
"""

from __future__ import annotations

import math

import numpy as np


def frames_total(num_samples: int, sample_rate: int, model_rate: int, frame_rate: float) -> int:
    """Codec frames the engine generates for a clip, counted as the engine counts them.

    Args:
        num_samples: the clip's length in samples at `sample_rate`.
        sample_rate: the clip's rate.
        model_rate: the codec's rate (32 kHz for MusicGen); the clip is resampled to it.
        frame_rate: codec frames per second (50 for MusicGen).

    Returns:
        `ceil(N' / hop)`, where `N'` is the resampled length (floored in float32, as the
        resampler does) and `hop = model_rate / frame_rate`.
    """
    resampled = num_samples
    if sample_rate != model_rate:
        resampled = int(math.floor(np.float32(model_rate * num_samples / sample_rate)))
    hop = int(round(model_rate / frame_rate))
    return -(-resampled // hop)
