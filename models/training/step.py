"""The training objective: cross-entropy over the target's codes, adapters trainable only.

As the release's training module computes it (audiocraft's `LMModel.compute_predictions`):
the target codes are laid out in the delay pattern, the model predicts every position in one
teacher-forced forward (`models.attention.NoCache`), the logits are reverted to
`[B, K, T, card]` and the cross-entropy is taken over the positions the pattern marks valid,
all codebooks together. The paper's text says L2 over latent tokens; the release uses this.
Instructions are dropped (the null text of classifier-free guidance) with probability
`text_dropout`, as audiocraft's training does (0.3 for MusicGen), so guidance keeps working.
"""
from __future__ import annotations

import math
import typing as tp
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import NoCache
from ..instruct_musicgen import AudioFusion, CrossAttentionLoRA, InstructMusicGen


def _text_loras(model: InstructMusicGen) -> Sequence[CrossAttentionLoRA]:
    """The text LoRA of each layer (`model.text_lora` is an `nn.ModuleList` of them)."""
    return tp.cast(Sequence[CrossAttentionLoRA], model.text_lora)


def adapter_parameters(model: InstructMusicGen) -> dict[str, nn.Parameter]:
    """Make the audio fusion and the text LoRA trainable and everything else frozen.

    Returns:
        the trainable parameters by name (`audio_fusion.*`, `text_lora.*`).
    Raises:
        ValueError: the LoRA is merged into the base weights (load with `merge_lora=False`).
    """
    if any(lora.merged for lora in _text_loras(model)):
        raise ValueError("the text LoRA is merged into the cross-attention weights: load the "
                         "model with merge_lora=False to train it")
    trainable = {}
    for name, param in model.named_parameters():
        keep = name.startswith(("audio_fusion.", "text_lora."))
        param.requires_grad_(keep)
        if keep:
            trainable[name] = param
    return trainable


@torch.no_grad()
def reset_adapter(model: InstructMusicGen, seed: int = 0) -> None:
    """Initialise the adapter as before any training (zero gates, zero LoRA B), so the model
    starts as plain MusicGen ignoring the condition (the paper's starting point)."""
    generator = torch.Generator().manual_seed(seed)
    fusion: AudioFusion = model.audio_fusion
    fusion.pos_emb.copy_(torch.randn(fusion.pos_emb.shape, generator=generator) * 0.02)
    for linear in tp.cast(Sequence[nn.Linear], fusion.merge_linear):
        bound = 1 / math.sqrt(linear.weight.shape[1])  # nn.Linear's default init
        uniform = torch.rand(linear.weight.shape, generator=generator)
        linear.weight.copy_(uniform * 2 * bound - bound)
    fusion.gates.zero_()
    for lora in _text_loras(model):
        for a in (lora.q_A, lora.v_A):
            bound = 1 / math.sqrt(a.shape[1])  # kaiming_uniform(a=sqrt(5)), as LoRA initialises A
            a.copy_(torch.rand(a.shape, generator=generator) * 2 * bound - bound)
        lora.q_B.zero_()
        lora.v_B.zero_()


@dataclass
class StepOutput:
    loss: torch.Tensor   # scalar, mean cross-entropy over valid target tokens
    correct: int         # tokens whose argmax is the target token
    tokens: int          # valid target tokens


def edit_loss(model: InstructMusicGen, inputs: torch.Tensor, targets: torch.Tensor,
              instructions: Sequence[str | None]) -> StepOutput:
    """Teacher-forced cross-entropy of the target codes given the input clip and instruction.

    Args:
        inputs: `[B, K, T]` long codes of the input (condition) clips.
        targets: `[B, K, T]` long codes of the clips the edit should produce.
        instructions: B templates; None is the null text (dropped instruction).
    """
    b, _, frames = targets.shape
    with torch.no_grad():  # T5 is frozen
        embeddings = model.text_embeddings(list(instructions))
    text = model.encode_text(embeddings)
    condition = model.encode_condition(inputs)
    pattern = model.lm.pattern_provider.get_pattern(frames)
    sequence, _, _ = pattern.build_pattern_sequence(targets, model.special_token_id,
                                                    keep_only_valid_steps=True)
    positions = torch.arange(sequence.shape[-1], device=targets.device).expand(b, -1)
    logits = model(sequence, positions, text, condition, NoCache())  # [B, K, S, card]
    logits, _, valid = pattern.revert_pattern_logits(logits.permute(0, 3, 1, 2), float("nan"),
                                                     keep_only_valid_steps=True)
    logits = logits.permute(0, 2, 3, 1)  # [B, K, T, card]
    mask = valid.unsqueeze(0).expand(b, -1, -1)
    picked, labels = logits[mask].float(), targets[mask]
    loss = F.cross_entropy(picked, labels)
    correct = int((picked.detach().argmax(dim=-1) == labels).sum())
    return StepOutput(loss, correct, int(labels.numel()))


def drop_instructions(instructions: Sequence[str], probability: float,
                      generator: torch.Generator) -> list[str | None]:
    """Replace each instruction by None (the null text) with `probability`."""
    draws = torch.rand(len(instructions), generator=generator).tolist()
    return [None if d < probability else text for d, text in zip(draws, instructions, strict=False)]
