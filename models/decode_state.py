"""What a decode step of `models.instruct_musicgen.InstructMusicGen.decode_step` reads
besides its input tokens: the weights prepared for it, and the caller's caches."""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodeLayerWeights:
    """One layer's weights as the decode step uses them (views of the module parameters).

    Attributes:
        cross_q: `[D, D]` query rows of the text cross-attention's packed projection.
        gate: the audio-fusion gate g_m as a host float (read once, not per step).
    """

    cross_q: torch.Tensor
    cross_q_bias: torch.Tensor | None
    gate: float


@dataclass(frozen=True)
class DecodeWeights:
    """The model's weights prepared once for the decode step: per-layer views, the four
    codebook heads as one `[K * card, D]` matrix (one GEMM instead of four) and the fusion gates
    as host floats. Build with `InstructMusicGen.decode_weights` after the weights are
    final (loaded, LoRA merged, cast)."""

    layers: tuple[DecodeLayerWeights, ...]
    heads: torch.Tensor
    heads_bias: torch.Tensor | None


@dataclass
class DecodeStepState:
    """Everything a decode step reads and writes besides the weights and the input tokens:
    the caller's caches, as views or gathered copies (see `models.engine.kv_cache`).

    R rows, N = R / rows_per_condition conditions, L layers; S cached positions per row,
    T text positions, C condition positions attended over.

    Attributes:
        rows: `[R]` long, each row's index into the writable self-attention slabs.
        positions: `[R]` long, where each row writes its new key/value (its sequence position).
        self_slabs: per layer, `[2, R_all, H, S_all, Dh]` (keys, values): written in place.
        self_k, self_v: per layer, `[R, H, S, Dh]`: what each row attends over.
        self_bias: `[R, 1, 1, S]` additive mask (0 where allowed, -inf elsewhere).
        text_k, text_v: per layer, `[R, H, T, Dh]`; text_bias: `[R, 1, 1, T]` or None.
        cond_q: per layer, `[N, H, 1, Dh]`: each condition's q' at its rows' position.
        cond_k, cond_v: per layer, `[N, H, C, Dh]`; cond_bias: `[N, 1, 1, C]` or None.
        rows_per_condition: consecutive rows sharing one condition (2 under CFG).
        gathered: `self_k`/`self_v` are copies, not views of the slabs (the failure-isolation
            path): each step's new keys/values are written into them too.
    """

    rows: torch.Tensor
    positions: torch.Tensor
    self_slabs: tp.Sequence[torch.Tensor]
    self_k: tp.Sequence[torch.Tensor]
    self_v: tp.Sequence[torch.Tensor]
    self_bias: torch.Tensor
    text_k: tp.Sequence[torch.Tensor]
    text_v: tp.Sequence[torch.Tensor]
    text_bias: torch.Tensor | None
    cond_q: tp.Sequence[torch.Tensor] | None
    cond_k: tp.Sequence[torch.Tensor] | None
    cond_v: tp.Sequence[torch.Tensor] | None
    cond_bias: torch.Tensor | None
    rows_per_condition: int = 2
    gathered: bool = False

    def write_kv(self, layer: int, kv: torch.Tensor) -> None:
        """Store layer `layer`'s new keys and values, `kv [R, 2, H, Dh]`, at each row's
        position."""
        self.self_slabs[layer][:, self.rows, :, self.positions] = kv
        if self.gathered:
            rows = torch.arange(kv.shape[0], device=kv.device)
            self.self_k[layer][rows, :, self.positions] = kv[:, 0]
            self.self_v[layer][rows, :, self.positions] = kv[:, 1]
