"""EnCodec over long audio in chunks, so that memory does not grow with the input's length.

EnCodec's activations are ~28 MB per second of audio (the 32 kHz model, float32); a 5-minute
song in one pass needs ~9 GB. Here audio is encoded and codes are decoded in chunks of
`chunk_frames` frames, each computed with `context_frames` of real context on both sides
(the convolutions and the LSTM see what they would see in one pass, up to the LSTM's memory
of what lies further back). Encoding keeps each chunk's middle frames; decoding crossfades
neighbouring chunks over `crossfade_frames` around each boundary (equal-gain ramps: the two
chunks decode the same frames there, so their audio is almost identical and the sum keeps
its level). `docs/engine.md` states the measured error against the one-pass computation.

Chunk boundaries are multiples of the codec's hop, so frame f of a chunk is frame f of the
whole input. The output of decoding is accumulated on the host: device memory stays at one
chunk's working set whatever the length.
"""
from __future__ import annotations

import typing as tp
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .audio import NonFiniteAudio


@dataclass(frozen=True)
class Chunking:
    """How long inputs are cut (in codec frames)."""

    chunk_frames: int = 500       # 10 s at 50 frames/s
    context_frames: int = 50      # 1 s on each side
    crossfade_frames: int = 10    # 0.2 s around each boundary when decoding

    def __post_init__(self) -> None:
        if self.chunk_frames < 1 or self.context_frames < 0:
            raise ValueError("chunk_frames must be >= 1 and context_frames >= 0")
        if not 0 <= self.crossfade_frames <= min(2 * self.context_frames, self.chunk_frames // 2):
            raise ValueError("crossfade_frames must lie within the context on both sides and "
                             "within half a chunk")

    @classmethod
    def from_seconds(cls, frame_rate: float, chunk_seconds: float,
                     context_seconds: float) -> Chunking:
        context = int(round(context_seconds * frame_rate))
        chunk = max(1, int(round(chunk_seconds * frame_rate)))
        return cls(chunk, context, min(2 * context, chunk // 2, int(round(0.2 * frame_rate))))


def hop_length(codec: tp.Any) -> int:
    """Audio samples per codec frame (640 for MusicGen's EnCodec)."""
    return int(round(codec.sample_rate / codec.frame_rate))


ChunkGuard = tp.Callable[[], AbstractContextManager]


@torch.no_grad()
def encode(codec: tp.Any, wav: torch.Tensor, chunking: Chunking = Chunking(),
           guard: ChunkGuard = nullcontext) -> torch.Tensor:
    """`[1, 1, N]` float audio at the codec's rate (any device) -> `[1, K, T]` long codes on
    the codec's device, `T = ceil(N / hop)`.

    Args:
        guard: entered around each chunk's codec call (the engine bounds how many chunks
            run at once on its device).
    """
    device = next(codec.parameters()).device
    hop = hop_length(codec)
    n = wav.shape[-1]
    total = -(-n // hop)
    pieces = []
    for start, end, left, right in _chunks(total, chunking):
        piece = wav[..., left * hop:min(n, right * hop)].to(device, non_blocking=True)
        with guard():
            codes, scale = codec.encode(piece)
        if scale is not None:
            raise ValueError("MusicGen's EnCodec does not renormalise; this codec does")
        pieces.append(codes[..., start - left:end - left])
    return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]


@torch.no_grad()
def decode(codec: tp.Any, codes: torch.Tensor, num_samples: int | None = None,
           chunking: Chunking = Chunking(), guard: ChunkGuard = nullcontext) -> torch.Tensor:
    """`[1, K, T]` codes -> `[1, 1, N]` float32 audio on the host, cut to `num_samples`.

    Raises:
        NonFiniteAudio: the decoded audio has NaN or infinite samples.
    """
    hop = hop_length(codec)
    total = codes.shape[-1]
    out = torch.zeros(1, 1, total * hop)
    fade = chunking.crossfade_frames * hop
    ramp = (torch.arange(fade, dtype=torch.float32) + 0.5) / fade if fade else None
    for start, end, left, right in _chunks(total, chunking):
        # This chunk's audio covers its frames plus half the crossfade on each inner side.
        first = start - chunking.crossfade_frames // 2 if start > 0 else 0
        half = chunking.crossfade_frames - chunking.crossfade_frames // 2
        last = end + half if end < total else total
        with guard():
            audio = codec.decode(codes[..., left:right], None)
        audio = audio[..., (first - left) * hop:(last - left) * hop].float().cpu()
        if not bool(torch.isfinite(audio).all()):
            raise NonFiniteAudio("the codec decoded these codes to NaN or infinite samples")
        if ramp is not None:
            if start > 0:
                audio[..., :fade] *= ramp
            if end < total:
                audio[..., -fade:] *= ramp.flip(0)
        out[..., first * hop:last * hop] += audio
    return out if num_samples is None else out[..., :num_samples]


def decode_range(codec: tp.Any, codes: tp.Any, start: int, end: int,
                 chunking: Chunking = Chunking(), guard: ChunkGuard = nullcontext) -> torch.Tensor:
    """Audio of frames `[start, end)` of `codes [1, K, T]`: `[1, 1, (end - start) * hop]`
    on the host, decoded with up to `context_frames` of the surrounding codes on each side
    (the same audio a decode of the whole clip gives there, to the codec's memory)."""
    left = max(0, start - chunking.context_frames)
    right = min(codes.shape[-1], end + chunking.context_frames)
    hop = hop_length(codec)
    audio = decode(codec, codes[..., left:right], chunking=chunking, guard=guard)
    return audio[..., (start - left) * hop:(end - left) * hop]


def _chunks(total: int, chunking: Chunking) -> tp.Iterator[tuple[int, int, int, int]]:
    """`(start, end, left, right)` frames: each chunk's own frames and the range computed
    for it (with context, clipped to the input). One chunk when the input is short; else
    `ceil(total / chunk_frames)` chunks of equal length (+-1), so none is shorter than half a
    chunk (or than a crossfade)."""
    size, context = chunking.chunk_frames, chunking.context_frames
    if total <= size + 2 * context:
        yield 0, total, 0, total
        return
    count = -(-total // size)
    bounds = [round(i * total / count) for i in range(count + 1)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        yield start, end, max(0, start - context), min(total, end + context)
