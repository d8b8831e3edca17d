"""The model runner: executes one decode step for a batch of slots, eagerly or by CUDA graph.

It knows *how* a batch runs (static input buffers, batch and length buckets, graph capture and
replay); it does not know which jobs are in the batch or what they sample.

Capture policy: every shape the runner can be asked for is captured (or, with
`torch.compile`, warmed up) when the runner is prepared, which the engine does while it is
built, before it takes a job: `torch.cuda.graph` synchronises the device and empties the
allocator's cache when it starts, so a capture while worker threads run EnCodec or T5 would
fail their allocations (or be failed by them). Shapes are captured largest first into one
shared memory pool. A shape whose capture fails runs eagerly from then on: logged once,
counted, never retried.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import typing as tp
from functools import partial

import torch

from musicedit.logs import log_event

from ..decode_state import DecodeWeights
from ..instruct_musicgen import InstructMusicGen
from .errors import is_fatal_device_error
from .kv_cache import ROWS_PER_SLOT, SlotBuffers, length_bucket

log = logging.getLogger(__name__)

StepShape = tuple[int, int, int]  # (slots, self-attention length, condition length)


class GraphBackend(tp.Protocol):
    """Captures a decode step and replays it."""

    def capture(self, run: tp.Callable[[], torch.Tensor]) -> tp.Callable[[], torch.Tensor]:
        """Capture `run` (reads and writes only static memory) and return a function that
        replays it and returns its output (static memory: consume before the next replay)."""
        ...


class CudaGraphBackend:
    """CUDA graphs: one warm-up run on a side stream, then capture into a pool shared by every
    graph of the runner (steps never overlap, so their intermediates can share memory).
    `capture_error_mode="thread_local"`: another thread's CUDA calls during a capture do not
    invalidate it (only this thread's unsafe calls do)."""

    def __init__(self, device: torch.device):
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)

    def capture(self, run: tp.Callable[[], torch.Tensor]) -> tp.Callable[[], torch.Tensor]:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            run()
        torch.cuda.current_stream().wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream,
                              capture_error_mode="thread_local"):
            out = run()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay


def batch_buckets(max_slots: int, buckets: tp.Sequence[int]) -> list[int]:
    """Slot counts the runner captures for: the configured ones up to `max_slots`, plus
    `max_slots` itself."""
    return sorted({b for b in buckets if 0 < b < max_slots} | {max_slots})


class DecodeRunner:
    """Runs the LM over the first `slots` slots (`2 * slots` rows) for one new position.

    Inputs are copied into static buffers. With padded shapes (on CUDA, or with graphs or
    `torch.compile` anywhere) a step runs over the smallest batch bucket holding the slots
    and attends over lengths rounded up to `length_multiple`: rows past the active ones are
    padding (position 0, special token) whose outputs are ignored; each shape is one graph.
    Eager CPU steps run the exact batch and lengths (no padding work).
    """

    def __init__(self, model: InstructMusicGen, weights: DecodeWeights, buffers: SlotBuffers,
                 buckets: tp.Sequence[int], length_multiple: int = 64,
                 use_cuda_graphs: bool = True, compile: bool = False,
                 backend: GraphBackend | None = None):
        self.model = model
        self.weights = weights
        self.buffers = buffers
        device = buffers.self_kv.device
        if backend is None and use_cuda_graphs and device.type == "cuda":
            backend = CudaGraphBackend(device)
        self.backend = backend
        self.buckets = batch_buckets(buffers.num_slots, buckets)
        self.padded = device.type == "cuda" or backend is not None or compile
        self.length_multiple = length_multiple
        rows = buffers.num_slots * ROWS_PER_SLOT
        self.tokens = torch.full((rows, model.num_codebooks), model.special_token_id,
                                 dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.graphs: dict[StepShape, tp.Callable[[], torch.Tensor]] = {}
        self.eager_shapes: set[StepShape] = set()   # their capture failed
        self.prepared: list[StepShape] = []          # in the order they were prepared
        self.capture_failures = 0
        self.compiled = compile
        self._forward = torch.compile(self._run, dynamic=False) if compile else self._run
        self._warned: set[StepShape] = set()

    # ------------------------------------------------------------------ shapes
    def bucket_for(self, slots: int) -> int:
        """Smallest bucket holding `slots` slots."""
        if not 0 < slots <= self.buckets[-1]:
            raise ValueError(f"{slots} slots do not fit the runner's {self.buckets[-1]}")
        return self.buckets[bisect.bisect_left(self.buckets, slots)]

    def shape_for(self, slots: int, self_length: int, cond_length: int) -> StepShape:
        """The step shape that runs `slots` slots attending over at least these lengths."""
        if not self.padded:
            return slots, self_length, cond_length
        g = self.buffers.geometry
        return (self.bucket_for(slots),
                length_bucket(self_length, self.length_multiple, g.self_capacity),
                length_bucket(cond_length, self.length_multiple, g.condition_capacity))

    def all_shapes(self) -> list[StepShape]:
        """Every padded shape, largest first."""
        g = self.buffers.geometry
        m = self.length_multiple
        self_lengths = sorted({length_bucket(n, m, g.self_capacity)
                               for n in range(1, g.max_sequence + 1)})
        cond_lengths = sorted({length_bucket(n, m, g.condition_capacity)
                               for n in range(1, g.condition_positions + 1)})
        return sorted(itertools.product(self.buckets, self_lengths, cond_lengths), reverse=True)

    # --------------------------------------------------------------- prepare
    @torch.no_grad()
    def prepare(self) -> None:
        """Capture (or compile) every shape the runner can be asked for; see the module
        docstring. Must run while no job holds a slot: warm-up runs write the caches of
        free slots' rows."""
        if self.backend is None and not self.compiled:
            return  # eager: nothing is built lazily
        for shape in self.all_shapes():
            self._load_padding(0, shape[0])
            if self.backend is None:
                self._forward(*shape)  # compile warm-up
            else:
                try:
                    self.graphs[shape] = self.backend.capture(partial(self._forward, *shape))
                except Exception as exc:
                    if is_fatal_device_error(exc):
                        raise
                    self.capture_failures += 1
                    self.eager_shapes.add(shape)
                    log_event(log, "cuda_graph_capture_failed", logging.WARNING, exc_info=exc,
                              slots=shape[0], self_length=shape[1], cond_length=shape[2],
                              error=f"{type(exc).__name__}: {exc}")
                    continue
            self.prepared.append(shape)

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, self_length: int,
             cond_length: int) -> tuple[torch.Tensor, StepShape]:
        """One decode step for slots `0..n-1`.

        Args:
            tokens: `[n, K]` long input tokens of each slot (both rows take the same).
            positions: `[n]` long sequence position of each slot.
            self_length: the furthest slot's position + 1 (a host int: no device read).
            cond_length: the longest condition (frames + 1) among the slots.
        Returns:
            `[2n, K, card]` logits (a view of static memory under graphs: consume before the
            next step) and the shape that ran.
        """
        slots = tokens.shape[0]
        shape = self.shape_for(slots, self_length, cond_length)
        rows = slots * ROWS_PER_SLOT
        k = tokens.shape[1]
        self.tokens[:rows].view(slots, ROWS_PER_SLOT, k).copy_(tokens.unsqueeze(1))
        self.positions[:rows].view(slots, ROWS_PER_SLOT).copy_(positions.unsqueeze(1))
        self._load_padding(slots, shape[0])
        replay = self.graphs.get(shape)
        if replay is not None:
            return replay()[:rows], shape
        unprepared = shape not in self.eager_shapes and shape not in self._warned
        if self.backend is not None and unprepared:
            self._warned.add(shape)
            log_event(log, "decode_shape_not_prepared", logging.WARNING, slots=shape[0],
                      self_length=shape[1], cond_length=shape[2])
        return self._forward(*shape)[:rows], shape

    @torch.no_grad()
    def step_slots(self, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                   shape: StepShape) -> torch.Tensor:
        """One decode step for the given slots only, eagerly (never a CUDA graph or compiled
        code): the engine re-runs a step that raised on parts of its batch to find the job
        that made it raise. Writes the same keys/values as `step` would for these
        slots, and attends over the same lengths (`shape`'s) as the whole batch did.

        Args:
            slots: `[s]` long slot indices.
            tokens: `[s, K]` long input tokens; positions: `[s]` long.
        Returns:
            `[2s, K, card]` logits (new memory).
        """
        row_positions = positions.repeat_interleave(ROWS_PER_SLOT)
        state = self.buffers.gathered_state(slots, row_positions, shape[1], shape[2])
        return self.model.decode_step(tokens.repeat_interleave(ROWS_PER_SLOT, dim=0),
                                      row_positions, state, self.weights)

    def _run(self, slots: int, self_length: int, cond_length: int) -> torch.Tensor:
        rows = slots * ROWS_PER_SLOT
        positions = self.positions[:rows]
        state = self.buffers.step_state(slots, positions, self_length, cond_length)
        return self.model.decode_step(self.tokens[:rows], positions, state, self.weights)

    def _load_padding(self, slots: int, bucket: int) -> None:
        """Rows of the bucket past the active slots: special token at position 0."""
        if bucket > slots:
            self.tokens[slots * ROWS_PER_SLOT:bucket * ROWS_PER_SLOT] = self.model.special_token_id
            self.positions[slots * ROWS_PER_SLOT:bucket * ROWS_PER_SLOT] = 0
