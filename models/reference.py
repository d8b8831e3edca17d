"""The reference single-job edit: one clip, one instruction, decoded step by step.

This is the readable definition of what an edit computes, used by the CLI and as the ground
truth the batched engine is tested against. It follows audiocraft's `LMModel.generate`
(delay pattern, classifier-free guidance as a batch of two) on top of Instruct-MusicGen,
with per-job seeded sampling from `models.sampling`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musicedit.instructions import normalize_instruction

from . import audio, codec
from .attention import ConcatKVCache
from .instruct_musicgen import InstructMusicGen
from .loader import LoadedModel
from .sampling import (
    SamplingParams,
    guided_logits,
    sample_tokens,
    step_keys,
    token_hashes,
    window_key,
)

# MusicGen and the adapter were trained on 5 s clips; the reference path edits one window.
TRAINING_WINDOW_SECONDS = 5.0


class InputTooLong(ValueError):
    """The clip is longer than the reference path's single window."""


@dataclass
class EditResult:
    audio: torch.Tensor       # [1, N] float32 at the codec's rate
    codes: torch.Tensor       # [1, K, T]
    instruction: str          # the canonical template the model saw


@torch.no_grad()
def generate_codes(model: InstructMusicGen, condition_codes: torch.Tensor, instruction: str,
                   params: SamplingParams, prompt: torch.Tensor | None = None,
                   window: int = 0) -> torch.Tensor:
    """Generate the edited clip's codes for one job (or one window of a long job).

    Args:
        model: Instruct-MusicGen.
        condition_codes: `[1, K, T]` long codes of the input clip.
        instruction: canonical instruction text (the template).
        params: sampling parameters (seed, top_k, top_p, temperature, cfg_coef).
        prompt: `[1, K, P]` codes the output must start with (P < T), as audiocraft's
            prompted generation: the previous window's tail when editing a long input.
        window: the window's index in a long input (its random stream, as the engine's).
    Returns:
        `[1, K, T]` long codes, as long as the input.
    """
    params.validate(model.card)
    device = condition_codes.device
    _, k, frames = condition_codes.shape
    special = model.special_token_id
    pattern = model.lm.pattern_provider.get_pattern(frames)
    unknown = -1
    codes = torch.full((1, k, frames), unknown, dtype=torch.long, device=device)
    prompt_frames = 0 if prompt is None else prompt.shape[-1]
    if prompt is not None:
        codes[..., :prompt_frames] = prompt
    sequence, _, valid = pattern.build_pattern_sequence(codes, special)
    # Classifier-free guidance on the text only: both rows see the condition audio.
    text = model.encode_text(model.text_embeddings([instruction, None]))
    condition = model.encode_condition(condition_codes)
    condition.rows_per_condition = 2
    cache = ConcatKVCache()
    key = torch.tensor([window_key(params.seed, window)], device=device)
    hashes = token_hashes(k, model.card, device)
    temperature = torch.tensor([params.temperature], device=device)
    top_k = torch.tensor([params.top_k], device=device)
    top_p = torch.tensor([params.top_p], device=device)
    cfg = torch.tensor([params.cfg_coef], device=device)
    start = pattern.get_first_step_with_timesteps(prompt_frames)
    if start is None:
        raise ValueError(f"a prompt of {prompt_frames} frames leaves nothing to generate")
    previous = 0
    for offset in range(start, sequence.shape[-1]):
        chunk = sequence[..., previous:offset].expand(2, -1, -1)
        positions = torch.arange(previous, offset, device=device).expand(2, -1)
        logits = model(chunk, positions, text, condition, cache)[:, :, -1].float()  # [2, K, card]
        logits = guided_logits(logits[:1], logits[1:], cfg)
        keys = step_keys(key, torch.tensor([offset], device=device))
        tokens = sample_tokens(logits, temperature, top_k, top_p, keys=keys, hashes=hashes,
                               candidates=params.candidates(model.card))  # [1, K]
        tokens = torch.where(valid[:, offset].view(1, -1), tokens, special)
        sequence[..., offset] = torch.where(sequence[..., offset] == unknown, tokens,
                                            sequence[..., offset])
        previous = offset
    codes, _, _ = pattern.revert_pattern_sequence(sequence, special_token=unknown)
    return codes[..., :frames]


def edit(model: LoadedModel, wav: np.ndarray | torch.Tensor, sample_rate: int, instruction: str,
         params: SamplingParams | None = None) -> EditResult:
    """Edit one clip: `edit(audio, instruction, params) -> audio`.

    Args:
        model: a loaded Instruct-MusicGen with its codec; its `stems` are what the
            instruction may name.
        wav: `[C, N]` float samples at `sample_rate` (any rate, any channel count).
        instruction: what the user typed ("add drums", "Music piece. Instruct: No Bass.").
        params: sampling parameters; the same seed gives the same output.
    Returns:
        The edited audio at the codec's rate (32 kHz mono), as long as the input.
    Raises:
        InstructionError: the instruction is not one of the model's operations and stems.
        InvalidAudio: the clip is empty, silent or has NaN/inf samples.
        InputTooLong: the clip is longer than the training window.
    """
    params = params or SamplingParams()
    canonical = normalize_instruction(instruction, model.stems).text
    x = audio.to_codec_input(wav, sample_rate, model.sample_rate)
    seconds = x.shape[-1] / model.sample_rate
    if seconds > TRAINING_WINDOW_SECONDS + 1e-6:
        raise InputTooLong(f"the clip is {seconds:.2f} s; a single edit takes at most "
                           f"{TRAINING_WINDOW_SECONDS:g} s (the model's training window)")
    codes = codec.encode(model.codec, x)
    out_codes = generate_codes(model.lm, codes.to(model.device), canonical, params)
    out = codec.decode(model.codec, out_codes, num_samples=x.shape[-1])
    return EditResult(out[0], out_codes, canonical)
