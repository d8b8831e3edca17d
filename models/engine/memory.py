"""The engine's GPU memory plan: how much of the device the slot caches may take.

Caches get `gpu_memory_fraction` of the free memory minus the headroom of what runs beside
decoding, measured once when the engine is built: `codec_concurrency` EnCodec chunks (encode
and decode), one batched condition pass of `condition_batch_size` windows, and the batched
prompt prefill (estimated from its activations). Nothing else allocates per job on the device
while serving: every other tensor is a slot's, allocated once.
"""
from __future__ import annotations

import logging
import typing as tp

import torch

from musicedit.logs import log_event

from .. import codec

if tp.TYPE_CHECKING:
    from .engine import EditEngine

log = logging.getLogger(__name__)


def gpu_cache_budget(engine: EditEngine) -> tuple[int, dict[str, int]]:
    """Bytes the slot caches may take on the engine's CUDA device, and the plan's figures."""
    device, config, model, lm = engine.device, engine.config, engine.model, engine.lm
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    codec_peak = _measure_peak(device, lambda: _codec_probe(engine))
    condition_peak = _measure_peak(device, lambda: _condition_probe(engine))
    rows = 2 * config.condition_batch_size
    item = torch.finfo(model.dtype).bits // 8
    prompt = engine.prompt_frames + engine.max_delay + 1
    # activations of one layer (q/k/v, 4x feed-forward, residual) and the logits
    prefill = rows * prompt * item * (12 * lm.dim + lm.num_codebooks * lm.card)
    headroom = max(1, config.codec_concurrency) * codec_peak + condition_peak + prefill
    budget = int(free * config.gpu_memory_fraction) - headroom
    per_slot = engine.geometry.bytes_per_slot(model.dtype)
    log_event(log, "engine_memory_plan", free=free, codec_chunk_peak=codec_peak,
              condition_pass_peak=condition_peak, prefill_estimate=prefill, headroom=headroom,
              cache_budget=budget, bytes_per_slot=per_slot)
    plan = dict(free=free, codec_chunk_peak=codec_peak, condition_pass_peak=condition_peak,
                prefill_estimate=prefill, headroom=headroom, cache_budget=budget,
                bytes_per_slot=per_slot)
    return max(0, budget), plan


def _measure_peak(device: torch.device, probe: tp.Callable[[], object]) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    probe()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _codec_probe(engine: EditEngine) -> None:
    frames = engine.chunking.chunk_frames + 2 * engine.chunking.context_frames
    silence = torch.zeros(1, 1, frames * codec.hop_length(engine.model.codec))
    codes = codec.encode(engine.model.codec, silence, engine.chunking)
    codec.decode(engine.model.codec, codes, chunking=engine.chunking)


@torch.no_grad()
def _condition_probe(engine: EditEngine) -> object:
    n = max(1, engine.config.condition_batch_size)
    codes = torch.zeros(n, engine.lm.num_codebooks, engine.window_frames, dtype=torch.long,
                        device=engine.device)
    return engine.lm.encode_condition(codes)
