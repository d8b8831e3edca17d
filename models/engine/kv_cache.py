"""Preallocated per-slot state of the decoding engine: nothing is allocated per step.

A *slot* holds one job window: two LM rows (conditional and unconditional halves of
classifier-free guidance: rows ``2i`` and ``2i + 1``) and one audio condition. Every buffer is
allocated once, for the engine's maximum number of slots, and written in place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..instruct_musicgen import ConditionKV, InstructMusicGen, TextKV, attention, attention_bias

ROWS_PER_SLOT = 2  # conditional + unconditional (classifier-free guidance)


@dataclass(frozen=True)
class SlotGeometry:
    """Sizes that fix every buffer's shape.

    Attributes:
        num_layers, num_heads, head_dim: of the LM.
        window_frames: longest window (condition clip) in frames.
        max_sequence: delay-pattern sequence steps of the longest window.
        max_text_tokens: longest instruction in T5 tokens.
    """

    num_layers: int
    num_heads: int
    head_dim: int
    window_frames: int
    max_sequence: int
    max_text_tokens: int

    @classmethod
    def for_model(cls, model: InstructMusicGen, window_frames: int, max_text_tokens: int) -> "SlotGeometry":
        max_delay = max(model.lm.pattern_provider.delays)
        return cls(model.num_layers, model.num_heads, model.head_dim, window_frames,
                   window_frames + max_delay + 1, max_text_tokens)

    def bytes_per_slot(self, dtype: torch.dtype) -> int:
        """Cache bytes one slot costs: self-attention K/V and text K/V of its two rows, and the
        condition path's q'/K'/V'."""
        item = torch.finfo(dtype).bits // 8
        width = self.num_layers * self.num_heads * self.head_dim
        self_kv = ROWS_PER_SLOT * 2 * self.max_sequence * width
        text_kv = ROWS_PER_SLOT * 2 * self.max_text_tokens * width
        condition = 3 * (self.window_frames + 1) * width
        return (self_kv + text_kv + condition) * item


class SlotBuffers:
    """All per-slot tensors of the engine, allocated once.

    Shapes (S = slots, R = 2S rows, L layers, H heads, Dh head dim):
        self_k, self_v: ``[L, R, H, max_sequence, Dh]``
        text_k, text_v: ``[L, R, H, max_text_tokens, Dh]``; text_mask ``[R, max_text_tokens]``
        cond_q, cond_k, cond_v: ``[L, S, H, window_frames + 1, Dh]``; cond_mask ``[S, W + 1]``;
        cond_frames ``[S]`` long.
    """

    def __init__(self, geometry: SlotGeometry, num_slots: int, device: torch.device,
                 dtype: torch.dtype):
        g = geometry
        rows = num_slots * ROWS_PER_SLOT
        kw = dict(device=device, dtype=dtype)
        self.geometry = g
        self.num_slots = num_slots
        self.self_k = torch.zeros(g.num_layers, rows, g.num_heads, g.max_sequence, g.head_dim, **kw)
        self.self_v = torch.zeros_like(self.self_k)
        self.text_k = torch.zeros(g.num_layers, rows, g.num_heads, g.max_text_tokens, g.head_dim, **kw)
        self.text_v = torch.zeros_like(self.text_k)
        self.text_mask = torch.zeros(rows, g.max_text_tokens, dtype=torch.bool, device=device)
        cond_shape = (g.num_layers, num_slots, g.num_heads, g.window_frames + 1, g.head_dim)
        self.cond_q = torch.zeros(cond_shape, **kw)
        self.cond_k = torch.zeros(cond_shape, **kw)
        self.cond_v = torch.zeros(cond_shape, **kw)
        self.cond_mask = torch.zeros(num_slots, g.window_frames + 1, dtype=torch.bool, device=device)
        self.cond_frames = torch.ones(num_slots, dtype=torch.long, device=device)
        # Empty slots attend to position 0 only, so padded rows stay finite.
        self.text_mask[:, 0] = True
        self.cond_mask[:, 0] = True

    def load_text(self, slot: int, text: TextKV) -> None:
        """Copy a job's text K/V (rows: conditional, null) into the slot's two rows."""
        r = slot * ROWS_PER_SLOT
        length = text.k[0].shape[2]
        if length > self.geometry.max_text_tokens:
            raise ValueError(f"the instruction is {length} tokens; the engine holds at most "
                             f"{self.geometry.max_text_tokens}")
        for m in range(self.geometry.num_layers):
            self.text_k[m, r:r + ROWS_PER_SLOT].zero_()
            self.text_v[m, r:r + ROWS_PER_SLOT].zero_()
            self.text_k[m, r:r + ROWS_PER_SLOT, :, :length] = text.k[m]
            self.text_v[m, r:r + ROWS_PER_SLOT, :, :length] = text.v[m]
        self.text_mask[r:r + ROWS_PER_SLOT] = False
        if text.mask is None:
            self.text_mask[r:r + ROWS_PER_SLOT, :length] = True
        else:
            self.text_mask[r:r + ROWS_PER_SLOT, :length] = text.mask

    def load_condition(self, slot: int, condition: ConditionKV, row: int = 0) -> None:
        """Copy row ``row`` of a (possibly batched, right-padded) condition path into a slot:
        its real frames plus the appended one."""
        positions = int(condition.num_frames[row]) + 1
        for m in range(self.geometry.num_layers):
            for dst, src in ((self.cond_q, condition.q), (self.cond_k, condition.k),
                             (self.cond_v, condition.v)):
                dst[m, slot, :, positions:].zero_()
                dst[m, slot, :, :positions] = src[m][row, :, :positions]
        self.cond_mask[slot] = False
        self.cond_mask[slot, :positions] = True
        self.cond_frames[slot] = positions - 1

    def reset(self, slot: int) -> None:
        """Return a slot to the harmless empty state (attend to position 0 only)."""
        r = slot * ROWS_PER_SLOT
        self.text_mask[r:r + ROWS_PER_SLOT] = False
        self.text_mask[r:r + ROWS_PER_SLOT, 0] = True
        self.cond_mask[slot] = False
        self.cond_mask[slot, 0] = True
        self.cond_frames[slot] = 1

    def text_view(self, rows: slice, length: int | None = None) -> TextKV:
        """The rows' text K/V; ``length`` keeps only the first text positions (eager decoding
        attends up to the longest instruction in the batch, not ``max_text_tokens``)."""
        t = slice(0, length)
        return TextKV([self.text_k[m, rows, :, t] for m in range(self.geometry.num_layers)],
                      [self.text_v[m, rows, :, t] for m in range(self.geometry.num_layers)],
                      self.text_mask[rows, t])

    def text_of_rows(self, rows: torch.Tensor, length: int | None = None) -> TextKV:
        """Text K/V of arbitrary rows (copies: for prefill and failure isolation, not per
        step); ``length`` keeps only the first text positions, as :meth:`text_view`."""
        layers = range(self.geometry.num_layers)
        t = slice(0, length)
        return TextKV([self.text_k[m, rows, :, t] for m in layers],
                      [self.text_v[m, rows, :, t] for m in layers], self.text_mask[rows, t])

    def condition_of_slots(self, slots: torch.Tensor, length: int | None = None) -> ConditionKV:
        """Condition state of arbitrary slots (copies: for prefill and failure isolation, not
        per step); ``length`` keeps only the first condition positions, as
        :meth:`condition_view`."""
        layers = range(self.geometry.num_layers)
        t = slice(0, length)
        return ConditionKV([self.cond_q[m, slots, :, t] for m in layers],
                           [self.cond_k[m, slots, :, t] for m in layers],
                           [self.cond_v[m, slots, :, t] for m in layers],
                           self.cond_frames[slots], self.cond_mask[slots, t],
                           rows_per_condition=ROWS_PER_SLOT)

    def condition_view(self, slots: slice, length: int | None = None) -> ConditionKV:
        """The slots' condition state; ``length`` keeps only the first condition positions
        (eager decoding attends up to the longest condition in the batch, not the window)."""
        layers = range(self.geometry.num_layers)
        t = slice(0, length)
        return ConditionKV([self.cond_q[m, slots, :, t] for m in layers],
                           [self.cond_k[m, slots, :, t] for m in layers],
                           [self.cond_v[m, slots, :, t] for m in layers],
                           self.cond_frames[slots], self.cond_mask[slots, t],
                           rows_per_condition=ROWS_PER_SLOT)


class StaticKVCache:
    """Self-attention K/V of a decode step: one new position per row, written in place.

    Rows ``0..R-1`` of the buffers take part; ``positions[r]`` is where row r writes and the
    last position it may attend to. Attention reads the first ``length`` positions: all of
    them under CUDA graphs (fixed shapes), only up to the furthest row otherwise.
    """

    def __init__(self, buffers: SlotBuffers, num_rows: int, positions: torch.Tensor,
                 length: int | None = None):
        self.buffers = buffers
        self.rows = torch.arange(num_rows, device=positions.device)
        self.positions = positions  # [R] long
        self.length = length or buffers.geometry.max_sequence
        steps = torch.arange(self.length, device=positions.device)
        allowed = (steps.view(1, -1) <= positions.view(-1, 1)).view(num_rows, 1, 1, -1)
        self.mask = attention_bias(allowed, buffers.self_k.dtype)  # once per step, not per layer

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v ``[R, H, 1, Dh]`` -> ``[R, H, 1, Dh]``."""
        n = q.shape[0]
        k_buf = self.buffers.self_k[layer]
        v_buf = self.buffers.self_v[layer]
        k_buf[self.rows, :, self.positions] = k[:, :, 0]
        v_buf[self.rows, :, self.positions] = v[:, :, 0]
        return attention(q, k_buf[:n, :, :self.length], v_buf[:n, :, :self.length], self.mask)


class GatheredKVCache(StaticKVCache):
    """A decode step's self-attention K/V for arbitrary rows (``rows[i]`` is the buffer row of
    batch row i), not the first R: the engine re-runs a failed step for some slots only. The
    reads gather (copy) the rows, so this is for that rare path, not every step."""

    def __init__(self, buffers: SlotBuffers, rows: torch.Tensor, positions: torch.Tensor,
                 length: int | None = None):
        super().__init__(buffers, rows.shape[0], positions, length)
        self.rows = rows  # [R] long

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v ``[R, H, 1, Dh]`` -> ``[R, H, 1, Dh]``."""
        k_buf = self.buffers.self_k[layer]
        v_buf = self.buffers.self_v[layer]
        k_buf[self.rows, :, self.positions] = k[:, :, 0]
        v_buf[self.rows, :, self.positions] = v[:, :, 0]
        return attention(q, k_buf[self.rows, :, :self.length], v_buf[self.rows, :, :self.length],
                         self.mask)


class PrefillKVCache:
    """Self-attention K/V for the prompt chunks of some slots, all of the same length:
    positions ``0..P-1`` of their rows."""

    def __init__(self, buffers: SlotBuffers, rows: torch.Tensor):
        self.buffers = buffers
        self.rows = rows  # [R] long: both rows of every slot being prefilled

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v ``[R, H, P, Dh]`` (positions from 0) -> ``[R, H, P, Dh]``, causal."""
        length = q.shape[2]
        self.buffers.self_k[layer][self.rows, :, :length] = k
        self.buffers.self_v[layer][self.rows, :, :length] = v
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
