"""Keys, values and attention of the Instruct-MusicGen model: the per-job text and condition
states, the attention function, and the self-attention caches of the readable (non-engine)
forward passes. The serving engine keeps its own static caches (`models.engine.kv_cache`).
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TextKV:
    """Text cross-attention keys/values of a batch, computed once per job.

    Attributes:
        k, v: per layer, `[B, H, Lt, Dh]`.
        mask: `[B, Lt]` bool, True where a text position may be attended (padding between
            jobs of different text lengths is False), or None when every position is real.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor | None = None


@dataclass
class ConditionKV:
    """Audio-fusion condition path of a batch (q', K', V' of every layer), computed once per job.

    Attributes:
        q, k, v: per layer, `[N, H, Tc + 1, Dh]` for Tc condition frames plus the appended
            special-token frame.
        num_frames: `[N]` long, Tc of each condition (they may differ when batched).
        mask: `[N, Tmax + 1]` bool over condition positions, or None if all are full.
        rows_per_condition: how many consecutive LM rows share one condition (2 under
            classifier-free guidance: the conditional and unconditional rows of a job see the
            same audio), so the batch has `N * rows_per_condition` rows.
    """

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    num_frames: torch.Tensor
    mask: torch.Tensor | None = None
    rows_per_condition: int = 1


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention, `[B, H, S, Dh]` x `[B, H, T, Dh]` -> `[B, H, S, Dh]`.

    `mask` (broadcastable to `[B, H, S, T]`) is either bool, True where attending is
    allowed, or a float additive bias (0 allowed, -inf not; see `attention_bias`: decode
    steps build it once per step instead of once per layer).
    Decode steps (a query or two per row) on the CPU use plain batched matmuls, which run
    about 1.7x faster there than PyTorch's CPU flash kernel; everything else uses SDPA.
    """
    if q.device.type == "cpu" and q.shape[2] <= 2:
        scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-1, -2))
        if mask is not None:
            scores = scores + mask if mask.is_floating_point() else scores.masked_fill(
                ~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Bool mask (True = may attend) -> additive bias (0 / -inf) in `dtype`."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf"))


class SelfAttentionKV(tp.Protocol):
    """How a caller stores self-attention keys/values across decoding steps."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this step's `k, v` `[B, H, S, Dh]` and return causal attention of `q`
        `[B, H, S, Dh]` over everything stored for the rows, `[B, H, S, Dh]`."""
        ...


class NoCache:
    """Whole-sequence causal self-attention, nothing kept (training-style forward)."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1)


class ConcatKVCache:
    """Growing cache for one batch decoding in lockstep (the reference path; not for serving)."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if layer in self.k:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        s, total = q.shape[2], k.shape[2]
        if s == 1:
            return attention(q, k, v)
        qpos = torch.arange(total - s, total, device=q.device).view(-1, 1)
        allowed = qpos >= torch.arange(total, device=q.device).view(1, -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
