"""Per-row token sampling: each row has its own parameters and its own random stream.

A row's draw depends only on its logits, its parameters and its own ``torch.Generator``, so a
job samples the same tokens alone or inside a batch of other jobs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one job (release defaults: top_k 100, temperature 1, cfg 3).

    ``top_k == 1`` or ``temperature == 0`` is greedy decoding; ``top_p > 0`` takes precedence
    over ``top_k`` (as in audiocraft).
    """

    seed: int = 0
    top_k: int = 100
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0

    def validate(self, card: int) -> None:
        """Raise ValueError naming the first parameter the model cannot use."""
        for name in ("top_p", "temperature", "cfg_coef"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no cut; values above {card} keep every "
                             f"token), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be between 0 and 1, got {self.top_p}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.cfg_coef >= 0.0:
            raise ValueError(f"cfg_coef must be >= 0, got {self.cfg_coef}")


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg_coef: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, audiocraft's form: ``uncond + (cond - uncond) * coef``.

    Args:
        cond, uncond: ``[B, K, card]``.
        cfg_coef: ``[B]``.
    """
    return uncond + (cond - uncond) * cfg_coef.view(-1, 1, 1).to(cond.dtype)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Sample one token per codebook for every row.

    Args:
        logits: ``[B, K, card]`` (any float dtype; computed in float32).
        temperature: ``[B]`` float; 0 means greedy.
        top_k: ``[B]`` long; 0 means no top-k cut, 1 means greedy.
        top_p: ``[B]`` float; 0 means no nucleus cut.
        generators: one per row; each row draws exactly ``K * card`` uniforms per call.
    Returns:
        ``[B, K]`` long tokens.
    """
    b, k, card = logits.shape
    logits = logits.float()
    greedy = (temperature <= 0) | (top_k == 1)
    temp = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    probs = torch.softmax(logits / temp.view(-1, 1, 1), dim=-1)
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    rank = torch.arange(card, device=logits.device).view(1, 1, -1)
    use_p = (top_p > 0).view(-1, 1, 1)
    k_limit = torch.where(top_k > 0, top_k.clamp(max=card), torch.full_like(top_k, card)).view(-1, 1, 1)
    keep_k = rank < k_limit
    cumulative = sorted_probs.cumsum(dim=-1)
    keep_p = (cumulative - sorted_probs) <= top_p.view(-1, 1, 1).float()
    keep = torch.where(use_p, keep_p, keep_k)
    kept = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; E comes from each row's
    # own generator so rows never share randomness.
    noise = torch.stack([
        torch.rand((k, card), generator=g, device=logits.device) for g in generators])
    exponential = -torch.log1p(-noise.clamp(max=1 - 1e-7))
    choice = (kept / exponential).argmax(dim=-1)
    sampled = sorted_idx.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return torch.where(greedy.view(-1, 1), logits.argmax(dim=-1), sampled)
