"""Per-slot state of the windows being decoded (the engine's "input batch", as in vLLM).

Slots in use are kept dense: slots `0..size-1`, so a step runs over the smallest batch bucket
that holds the active windows and no free slot is ever padding between them. A window that
leaves makes room by moving the last slot into its place (`BatchState.move`).

Everything a decode step reads per slot (its delay-pattern sequence, position, window length,
noise key and sampling parameters) lives in device tensors written at admission; the host keeps
its own copy of what control flow needs (positions, when a window ends), so a steady-state
step never reads the device.
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import torch

from ..sampling import SamplingParams

UNKNOWN = -1  # a sequence entry the model has not generated yet


@dataclass
class SlotInfo:
    """Host-side state of one slot.

    Attributes:
        work: the engine's work item (a job window).
        last_step: the window is done when `position` reaches this.
        position: next input position (the host copy of `BatchState.positions[slot]`).
        frames: the window's frames (condition positions - 1).
        candidates: how many most likely tokens its draws look at.
    """

    work: tp.Any
    last_step: int
    position: int
    frames: int
    candidates: int


class BatchState:
    """Dense per-slot decoding state on the engine's device, with host mirrors.

    Device tensors (`S` slots, `K` codebooks, `P` sequence steps): `sequences [S, K, P]` long
    (special where the pattern is empty, the prompt where given, `UNKNOWN` where the model
    generates), `positions [S]`, `frames [S]`, `keys [S]` (noise keys), `temperature`,
    `top_k`, `top_p`, `cfg_coef [S]`, `nonfinite [S]` bool (a step produced NaN/inf logits).
    """

    def __init__(self, num_slots: int, num_codebooks: int, max_sequence: int,
                 delays: tp.Sequence[int], special_token: int, device: torch.device):
        self.num_slots = num_slots
        self.special_token = special_token
        self.infos: list[SlotInfo] = []
        self.sequences = torch.full((num_slots, num_codebooks, max_sequence), UNKNOWN,
                                    dtype=torch.long, device=device)
        self.positions = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.frames = torch.ones(num_slots, dtype=torch.long, device=device)
        self.keys = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.temperature = torch.ones(num_slots, device=device)
        self.top_k = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.top_p = torch.zeros(num_slots, device=device)
        self.cfg_coef = torch.ones(num_slots, device=device)
        self.nonfinite = torch.zeros(num_slots, dtype=torch.bool, device=device)
        self.delays = torch.tensor(list(delays), dtype=torch.long, device=device)
        self.codebooks = torch.arange(num_codebooks, dtype=torch.long, device=device)
        self.slot_index = torch.arange(num_slots, dtype=torch.long, device=device)
        self._fields = (self.sequences, self.positions, self.frames, self.keys, self.temperature,
                        self.top_k, self.top_p, self.cfg_coef, self.nonfinite)

    @property
    def size(self) -> int:
        """Slots in use (they are `0..size-1`)."""
        return len(self.infos)

    def add(self, info: SlotInfo, sequence: torch.Tensor, key: int,
            params: SamplingParams) -> int:
        """Put a window into the first free slot; returns the slot.

        Args:
            sequence: `[K, P]` long initial sequence (see the class docstring).
            key: the window's noise key (`models.sampling.window_key`).
        """
        slot = self.size
        if slot >= self.num_slots:
            raise RuntimeError("no free slot")
        self.infos.append(info)
        self.sequences[slot] = sequence
        self.positions[slot] = info.position
        self.frames[slot] = info.frames
        self.keys[slot] = key
        self.temperature[slot] = params.temperature
        self.top_k[slot] = params.top_k
        self.top_p[slot] = params.top_p
        self.cfg_coef[slot] = params.cfg_coef
        self.nonfinite[slot] = False
        return slot

    def move(self, source: int, target: int) -> None:
        """Copy slot `source`'s state into slot `target` (the engine moves the last slot into
        a freed one)."""
        for tensor in self._fields:
            tensor[target] = tensor[source]
        self.infos[target] = self.infos[source]

    def pop(self) -> SlotInfo:
        """Free the last slot in use."""
        return self.infos.pop()

    def max_candidates(self, slots: int) -> int:
        return max(info.candidates for info in self.infos[:slots])

    def current_tokens(self, rows: torch.Tensor) -> torch.Tensor:
        """`[n, K]` long input tokens of slots `rows` (`[n]` long) at their positions."""
        positions = self.positions[rows]
        return self.sequences[rows.view(-1, 1), self.codebooks, positions.view(-1, 1)]

    def write_sampled(self, rows: torch.Tensor, sampled: torch.Tensor) -> None:
        """Write each slot's sampled tokens at its next step and advance its position.

        The delay pattern decides which codebooks are real at that step; prompt tokens
        already in place are kept.

        Args:
            rows: `[n]` long slots.
            sampled: `[n, K]` long tokens.
        """
        nxt = self.positions[rows] + 1
        frame = nxt.view(-1, 1) - 1 - self.delays.view(1, -1)
        valid = (frame >= 0) & (frame < self.frames[rows].view(-1, 1))
        new = torch.where(valid, sampled, self.special_token)
        index = (rows.view(-1, 1), self.codebooks, nxt.view(-1, 1))
        current = self.sequences[index]
        self.sequences[index] = torch.where(current == UNKNOWN, new, current)
        self.positions[rows] = nxt
