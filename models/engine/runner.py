"""The model runner: executes one decode step for a batch of slots, eagerly or by CUDA graph.

It knows *how* a batch runs (static input buffers, batch-size buckets, graph capture and
replay); it does not know which jobs are in the batch or what they sample.
"""
from __future__ import annotations

import bisect
import typing as tp

import torch

from ..instruct_musicgen import InstructMusicGen
from .kv_cache import ROWS_PER_SLOT, GatheredKVCache, SlotBuffers, StaticKVCache


def batch_buckets(max_slots: int, buckets: tp.Sequence[int]) -> list[int]:
    """Slot counts the runner compiles/captures for: the configured ones up to ``max_slots``,
    plus ``max_slots`` itself."""
    chosen = sorted({b for b in buckets if 0 < b < max_slots} | {max_slots})
    return chosen


class DecodeRunner:
    """Runs the LM over the first ``bucket`` slots (``2 * bucket`` rows) for one new position.

    Inputs are copied into static buffers; rows past the active ones are padding (position 0,
    special token) whose outputs are ignored. On CUDA with ``use_cuda_graphs`` each bucket's
    step is captured once and replayed; elsewhere it runs eagerly (optionally
    ``torch.compile``d).
    """

    def __init__(self, model: InstructMusicGen, buffers: SlotBuffers, buckets: tp.Sequence[int],
                 use_cuda_graphs: bool = True, compile: bool = False):
        self.model = model
        self.buffers = buffers
        self.buckets = batch_buckets(buffers.num_slots, buckets)
        device = buffers.self_k.device
        rows = buffers.num_slots * ROWS_PER_SLOT
        self.tokens = torch.full((rows, model.num_codebooks, 1), model.special_token_id,
                                 dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.use_cuda_graphs = use_cuda_graphs and device.type == "cuda"
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.compiled = compile
        self._forward = torch.compile(self._eager, dynamic=False) if compile else self._eager

    def bucket_for(self, num_slots: int) -> int:
        """Smallest bucket holding ``num_slots`` slots."""
        if not 0 < num_slots <= self.buckets[-1]:
            raise ValueError(f"{num_slots} slots do not fit the runner's {self.buckets[-1]}")
        return self.buckets[bisect.bisect_left(self.buckets, num_slots)]

    @torch.no_grad()
    def _eager(self, rows: int, length: int | None = None,
               condition_length: int | None = None, text_length: int | None = None) -> torch.Tensor:
        positions = self.positions[:rows]
        cache = StaticKVCache(self.buffers, rows, positions, length)
        text = self.buffers.text_view(slice(0, rows), text_length)
        condition = self.buffers.condition_view(slice(0, rows // ROWS_PER_SLOT), condition_length)
        logits = self.model(self.tokens[:rows], positions.view(-1, 1), text, condition, cache)
        return logits[:, :, 0]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor,
             max_position: int | None = None, condition_length: int | None = None,
             text_length: int | None = None) -> torch.Tensor:
        """One decode step.

        Args:
            tokens: ``[R, K, 1]`` long input tokens of the first R rows (R = 2 * slots in use,
                counting free slots below the highest one in use).
            positions: ``[R]`` long sequence position of each row.
            max_position: the furthest row's position, if known without a device sync; the
                eager path then attends over that many cached positions only.
            condition_length: the longest condition (frames + 1) among the rows, if known;
                the eager path then attends over that many condition positions only.
            text_length: the longest instruction (tokens) among the rows, if known; likewise.
        Returns:
            ``[R, K, card]`` logits (views of static memory: consume before the next step).
        """
        rows = tokens.shape[0]
        bucket_rows = self.bucket_for(rows // ROWS_PER_SLOT) * ROWS_PER_SLOT
        self.tokens[:rows].copy_(tokens)
        self.positions[:rows].copy_(positions)
        self.tokens[rows:bucket_rows].fill_(self.model.special_token_id)
        self.positions[rows:bucket_rows].zero_()
        if not self.use_cuda_graphs:
            if self.compiled:  # static shapes: one compiled graph per bucket, not per length
                return self._forward(bucket_rows)[:rows]
            length = None if max_position is None else max_position + 1
            return self._forward(bucket_rows, length, condition_length, text_length)[:rows]
        if bucket_rows not in self.graphs:
            self.graphs[bucket_rows] = self._capture(bucket_rows)
        graph, out = self.graphs[bucket_rows]
        graph.replay()
        return out[:rows]

    @torch.no_grad()
    def step_slots(self, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                   max_position: int | None, condition_length: int | None,
                   text_length: int | None) -> torch.Tensor:
        """One decode step for the given slots only, eagerly (never a CUDA graph or compiled
        code): the engine re-runs a step that raised on parts of its batch to find the job
        that made it raise. Writes the same K/V as :meth:`step` would for these slots, and
        attends over the same lengths as :meth:`step` for the whole batch.

        Args:
            slots: ``[S]`` long slot indices.
            tokens: ``[2S, K, 1]`` long input tokens, rows ``2i, 2i + 1`` of slot ``slots[i]``.
            positions: ``[2S]`` long sequence position of each row.
            max_position, condition_length, text_length: as given to :meth:`step` for the
                whole batch.
        Returns:
            ``[2S, K, card]`` logits (new memory).
        """
        if self.use_cuda_graphs or self.compiled:  # those steps attend over the static maxima
            max_position = condition_length = text_length = None
        rows = (slots.view(-1, 1) * ROWS_PER_SLOT
                + torch.arange(ROWS_PER_SLOT, device=slots.device)).flatten()
        length = None if max_position is None else max_position + 1
        cache = GatheredKVCache(self.buffers, rows, positions, length)
        text = self.buffers.text_of_rows(rows, text_length)
        condition = self.buffers.condition_of_slots(slots, condition_length)
        logits = self.model(tokens, positions.view(-1, 1), text, condition, cache)
        return logits[:, :, 0]

    def _capture(self, rows: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up runs execute this very step (same inputs), so their cache writes are the
        # writes the replay makes anyway.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(rows)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(rows)
        return graph, out
