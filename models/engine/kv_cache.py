"""Preallocated per-slot caches of the decoding engine: nothing is allocated per step.

A *slot* holds one job window: two LM rows (the conditional and unconditional halves of
classifier-free guidance: rows `2i` and `2i + 1`) and one audio condition. Every buffer is
allocated once, for the engine's number of slots, and written in place. Keys and values of all
layers sit in one tensor each (`[2 * layers, ...]`: keys of layer m at `2m`, values at
`2m + 1`) so that a decode step takes every layer's view with one slice and one `unbind`,
not a few ATen calls per layer.
"""
from __future__ import annotations

import math
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import ConditionKV, TextKV
from ..decode_state import DecodeStepState

if tp.TYPE_CHECKING:  # the model class imports audiocraft; the cache code needs only its shape
    from ..instruct_musicgen import InstructMusicGen

ROWS_PER_SLOT = 2  # conditional + unconditional (classifier-free guidance)
ALIGN = 8  # positions; 16 bytes of fp16: what the fused attention kernels want for masks


def _round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


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
    def for_model(cls, model: InstructMusicGen, window_frames: int,
                  max_text_tokens: int) -> SlotGeometry:
        max_delay = max(model.delays)
        return cls(model.num_layers, model.num_heads, model.head_dim, window_frames,
                   window_frames + max_delay + 1, max_text_tokens)

    @property
    def condition_positions(self) -> int:
        """Condition frames plus the appended special-token frame."""
        return self.window_frames + 1

    @property
    def self_capacity(self) -> int:
        """Cached self-attention positions allocated per row: `max_sequence` rounded up to a
        multiple of 8, so that attention lengths (and masks) stay aligned for the fused CUDA
        kernels; positions past `max_sequence` are never written nor attended."""
        return _round_up(self.max_sequence, ALIGN)

    @property
    def condition_capacity(self) -> int:
        """Condition positions allocated per slot (likewise rounded up)."""
        return _round_up(self.condition_positions, ALIGN)

    def bytes_per_slot(self, dtype: torch.dtype) -> int:
        """Bytes `SlotBuffers` allocates per slot: self-attention and text keys/values
        of its two rows, the condition path's q'/K'/V', the attention biases and the
        condition length."""
        item = torch.finfo(dtype).bits // 8
        width = self.num_layers * self.num_heads * self.head_dim
        self_kv = ROWS_PER_SLOT * 2 * self.self_capacity * width
        text_kv = ROWS_PER_SLOT * 2 * self.max_text_tokens * width
        condition = 3 * self.condition_capacity * width
        biases = ROWS_PER_SLOT * self.max_text_tokens + self.condition_capacity
        return (self_kv + text_kv + condition + biases) * item + 8  # + cond_frames (int64)


def length_bucket(length: int, multiple: int, maximum: int) -> int:
    """`length` rounded up to a multiple of `multiple`, at most `maximum`."""
    return min(maximum, multiple * math.ceil(length / multiple))


class SlotBuffers:
    """All per-slot tensors of the engine, allocated once.

    Shapes (S slots, R = 2S rows, L layers, H heads, Dh head dim, P = self_capacity,
    T = max_text_tokens, C = condition_capacity):
        self_kv: `[2L, R, H, P, Dh]`, text_kv: `[2L, R, H, T, Dh]`,
        text_bias: `[R, 1, 1, T]` additive (0 attend, -inf not),
        cond_q: `[S, C, L, H, 1, Dh]` (slot-major: one gather serves every layer),
        cond_kv: `[2L, S, H, C, Dh]`, cond_bias: `[S, 1, 1, C]`, cond_frames: `[S]` long.
    A free slot attends to position 0 only, so padding rows stay finite.
    """

    def __init__(self, geometry: SlotGeometry, num_slots: int, device: torch.device,
                 dtype: torch.dtype):
        g = geometry
        rows = num_slots * ROWS_PER_SLOT
        self.geometry = g
        self.num_slots = num_slots
        self.dtype = dtype
        layers2 = 2 * g.num_layers
        h, dh = g.num_heads, g.head_dim
        self.self_kv = torch.zeros(layers2, rows, h, g.self_capacity, dh, dtype=dtype,
                                   device=device)
        self.text_kv = torch.zeros(layers2, rows, h, g.max_text_tokens, dh, dtype=dtype,
                                   device=device)
        self.text_bias = torch.full((rows, 1, 1, g.max_text_tokens), -math.inf, dtype=dtype,
                                    device=device)
        c = g.condition_capacity
        self.cond_q = torch.zeros(num_slots, c, g.num_layers, h, 1, dh, dtype=dtype, device=device)
        self.cond_kv = torch.zeros(layers2, num_slots, h, c, dh, dtype=dtype, device=device)
        self.cond_bias = torch.full((num_slots, 1, 1, c), -math.inf, dtype=dtype, device=device)
        self.cond_frames = torch.ones(num_slots, dtype=torch.long, device=device)
        self.text_bias[..., 0] = 0.0
        self.cond_bias[..., 0] = 0.0
        # Per layer, the writable [2, R, H, P, Dh] keys/values: fixed views, made once.
        self.self_slabs = tuple(self.self_kv[2 * m:2 * m + 2] for m in range(g.num_layers))
        self.slot_index = torch.arange(num_slots, device=device)
        self.row_index = torch.arange(rows, device=device)
        self.sequence_steps = torch.arange(g.self_capacity, device=device)

    # ------------------------------------------------------------- admission
    def load_text(self, slot: int, text: TextKV) -> None:
        """Copy a job's text keys/values (rows: conditional, null) into the slot's two rows."""
        r = slice(slot * ROWS_PER_SLOT, (slot + 1) * ROWS_PER_SLOT)
        length = text.k[0].shape[2]
        if length > self.geometry.max_text_tokens:
            raise ValueError(f"the instruction is {length} tokens; the engine holds at most "
                             f"{self.geometry.max_text_tokens}")
        # [2L, 2, H, Lt, Dh]: keys and values of each layer, interleaved
        kv = torch.stack([t for pair in zip(text.k, text.v, strict=True) for t in pair])
        self.text_kv[:, r, :, :length] = kv
        self.text_kv[:, r, :, length:] = 0.0
        allowed = torch.ones(ROWS_PER_SLOT, length, dtype=torch.bool, device=kv.device)
        if text.mask is not None:
            allowed = text.mask.to(kv.device)
        bias = self.text_bias[r, 0, 0]
        bias.fill_(-math.inf)
        bias[:, :length].masked_fill_(allowed, 0.0)

    def load_condition(self, slot: int, condition: ConditionKV, row: int = 0) -> None:
        """Copy row `row` of a (possibly batched, right-padded) condition path into a slot:
        its real frames plus the appended one."""
        positions = int(condition.num_frames[row]) + 1
        q = torch.stack([q[row, :, :positions] for q in condition.q])  # [L, H, C', Dh]
        self.cond_q[slot, :positions] = q.permute(2, 0, 1, 3).unsqueeze(3)
        self.cond_q[slot, positions:] = 0.0
        pairs = zip(condition.k, condition.v, strict=True)
        kv = torch.stack([t[row, :, :positions] for pair in pairs for t in pair])
        self.cond_kv[:, slot, :, :positions] = kv
        self.cond_kv[:, slot, :, positions:] = 0.0
        self.cond_bias[slot].fill_(-math.inf)
        self.cond_bias[slot, ..., :positions] = 0.0
        self.cond_frames[slot] = positions - 1

    def reset(self, slot: int) -> None:
        """Return a slot to the harmless empty state (attend to position 0 only)."""
        r = slice(slot * ROWS_PER_SLOT, (slot + 1) * ROWS_PER_SLOT)
        self.text_bias[r].fill_(-math.inf)
        self.text_bias[r, ..., 0] = 0.0
        self.cond_bias[slot].fill_(-math.inf)
        self.cond_bias[slot, ..., 0] = 0.0
        self.cond_frames[slot] = 1

    def clear(self, slot: int) -> None:
        """Zero everything a slot holds: after a job whose logits went non-finite, so that no
        NaN it left in the caches can reach the next job through a masked position."""
        r = slice(slot * ROWS_PER_SLOT, (slot + 1) * ROWS_PER_SLOT)
        self.self_kv[:, r].zero_()
        self.text_kv[:, r].zero_()
        self.cond_q[slot].zero_()
        self.cond_kv[:, slot].zero_()
        self.reset(slot)

    def move(self, source: int, target: int, self_positions: int, cond_positions: int) -> None:
        """Copy slot `source`'s state into slot `target` (keeping the slots in use dense):
        the first `self_positions` cached positions and `cond_positions` condition positions
        (what the window has used), its text and masks."""
        src = slice(source * ROWS_PER_SLOT, (source + 1) * ROWS_PER_SLOT)
        dst = slice(target * ROWS_PER_SLOT, (target + 1) * ROWS_PER_SLOT)
        self.self_kv[:, dst, :, :self_positions] = self.self_kv[:, src, :, :self_positions]
        self.text_kv[:, dst] = self.text_kv[:, src]
        self.text_bias[dst] = self.text_bias[src]
        self.cond_q[target, :cond_positions] = self.cond_q[source, :cond_positions]
        self.cond_kv[:, target, :, :cond_positions] = self.cond_kv[:, source, :, :cond_positions]
        self.cond_bias[target] = self.cond_bias[source]
        self.cond_frames[target] = self.cond_frames[source]

    # -------------------------------------------------------------- per step
    def step_state(self, slots: int, positions: torch.Tensor, self_length: int,
                   cond_length: int) -> DecodeStepState:
        """Views for a decode step of slots `0..slots-1` (rows `0..2 * slots - 1`).

        Args:
            positions: `[2 * slots]` long, each row's position (where it writes).
            self_length: cached positions attended over (>= the furthest position + 1).
            cond_length: condition positions attended over (>= the longest condition + 1).
        """
        rows = slots * ROWS_PER_SLOT
        kv = self.self_kv[:, :rows, :, :self_length].unbind(0)
        text = self.text_kv[:, :rows].unbind(0)
        cond = self.cond_kv[:, :slots, :, :cond_length].unbind(0)
        first = positions.view(slots, ROWS_PER_SLOT)[:, 0]
        frames = self.cond_frames[:slots]
        query = self.cond_q[self.slot_index[:slots], torch.minimum(first, frames - 1)]
        return DecodeStepState(
            rows=self.row_index[:rows],
            positions=positions, self_slabs=self.self_slabs,
            self_k=kv[0::2], self_v=kv[1::2],
            self_bias=self._self_bias(positions, self_length),
            text_k=text[0::2], text_v=text[1::2], text_bias=self.text_bias[:rows],
            cond_q=query.unbind(1), cond_k=cond[0::2], cond_v=cond[1::2],
            cond_bias=self.cond_bias[:slots, ..., :cond_length])

    def gathered_state(self, slots: torch.Tensor, positions: torch.Tensor, self_length: int,
                       cond_length: int) -> DecodeStepState:
        """`step_state` for arbitrary slots (copies: for the failure-isolation path,
        not every step). `positions` are the `2 * len(slots)` rows' positions; the rows
        write into their own slabs."""
        rows = _rows_of(slots)
        kv = self.self_kv[:, rows, :, :self_length].unbind(0)
        text = self.text_kv[:, rows].unbind(0)
        cond = self.cond_kv[:, slots, :, :cond_length].unbind(0)
        first = positions.view(-1, ROWS_PER_SLOT)[:, 0]
        query = self.cond_q[slots, torch.minimum(first, self.cond_frames[slots] - 1)]
        return DecodeStepState(
            rows=rows, positions=positions, self_slabs=self.self_slabs,
            self_k=kv[0::2], self_v=kv[1::2],
            self_bias=self._self_bias(positions, self_length),
            text_k=text[0::2], text_v=text[1::2], text_bias=self.text_bias[rows],
            cond_q=query.unbind(1), cond_k=cond[0::2], cond_v=cond[1::2],
            cond_bias=self.cond_bias[slots, ..., :cond_length], gathered=True)

    def _self_bias(self, positions: torch.Tensor, length: int) -> torch.Tensor:
        """`[R, 1, 1, length]`: row r attends to its cached positions `0..positions[r]`."""
        allowed = self.sequence_steps[:length].view(1, -1) <= positions.view(-1, 1)
        return torch.where(allowed, 0.0, -math.inf).to(self.dtype).view(-1, 1, 1, length)

    # ------------------------------------------------- prefill (whole prompts)
    def text_of_slots(self, slots: torch.Tensor) -> TextKV:
        """Text keys/values of the slots' rows (copies), as the model's forward takes them."""
        rows = _rows_of(slots)
        text = self.text_kv[:, rows].unbind(0)
        return TextKV(list(text[0::2]), list(text[1::2]), self.text_bias[rows, 0, 0] == 0)

    def condition_of_slots(self, slots: torch.Tensor) -> ConditionKV:
        """The slots' condition path (copies), as the model's forward takes it."""
        layers = self.geometry.num_layers
        cond = self.cond_kv[:, slots].unbind(0)
        q = self.cond_q[slots, :, :, :, 0]  # [N, C, L, H, Dh]
        return ConditionKV([q[:, :, m].transpose(1, 2) for m in range(layers)],
                           list(cond[0::2]), list(cond[1::2]), self.cond_frames[slots],
                           self.cond_bias[slots, 0, 0] == 0, rows_per_condition=ROWS_PER_SLOT)


def _rows_of(slots: torch.Tensor) -> torch.Tensor:
    """`[2S]` long buffer rows of `[S]` slots (rows `2i, 2i + 1` of slot i)."""
    offsets = torch.arange(ROWS_PER_SLOT, device=slots.device)
    return (slots.view(-1, 1) * ROWS_PER_SLOT + offsets).flatten()


class PrefillKVCache:
    """Self-attention keys/values for the prompt chunks of some slots, all of the same
    length: positions `0..P-1` of their rows."""

    def __init__(self, buffers: SlotBuffers, rows: torch.Tensor):
        self.buffers = buffers
        self.rows = rows  # [R] long: both rows of every slot being prefilled

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v `[R, H, P, Dh]` (positions from 0) -> `[R, H, P, Dh]`, causal."""
        length = q.shape[2]
        slab = self.buffers.self_slabs[layer]
        slab[0, self.rows, :, :length] = k
        slab[1, self.rows, :, :length] = v
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
