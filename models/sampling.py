"""Per-row token sampling: each row has its own parameters and its own random stream.

A row's draw depends only on its logits, its parameters and a counter-based noise key
`(seed, window, step)`: the noise for token `t` of codebook `k` is a pure hash of the key and
`k * card + t`, with no generator state. So a job samples the same tokens alone or inside a
batch of other jobs, in the engine or in the reference loop, eagerly or inside a CUDA graph,
and nothing has to be read back from the device to keep the streams going.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from musicedit.jobs import step_seed

_MASK32 = 0xFFFFFFFF
# Odd constants of a 32-bit integer hash with low bias (Chris Wellons' `lowbias32`).
_HASH_MUL_1 = 0x7FEB352D
_HASH_MUL_2 = 0x846CA68B
# Separates the fields of a noise key (seed halves, window, step); any odd 32-bit constants.
_SEED_HIGH_SALT = 0x9E3779B9
_STEP_MUL = 0x85EBCA77
_TOKEN_SALT = 0xC2B2AE3D
# Uniforms carry 24 bits (a float32 mantissa) and lie strictly inside (0, 1).
_UNIFORM_BITS = 24


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one job (release defaults: top_k 100, temperature 1, cfg 3).

    `top_k == 1` or `temperature == 0` is greedy decoding; `top_p > 0` takes precedence
    over `top_k` (as in audiocraft).
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
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be between 0 and 2**64 - 1, got {self.seed}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no cut; values above {card} keep every "
                             f"token), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be between 0 and 1, got {self.top_p}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.cfg_coef >= 0.0:
            raise ValueError(f"cfg_coef must be >= 0, got {self.cfg_coef}")

    def for_step(self, step: int) -> SamplingParams:
        """The parameters step `step` of a chained edit samples with: step 0 is the job's own
        seed; step k is the seed a separate job editing step k - 1's result would need to
        sample the same tokens (`step_seed`)."""
        return replace(self, seed=step_seed(self.seed, step))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1

    def candidates(self, card: int) -> int:
        """How many most likely tokens a draw of these parameters can pick from (top-p rows
        may need all of them)."""
        if self.greedy:
            return 1
        if self.top_p > 0 or self.top_k == 0:
            return card
        return min(self.top_k, card)


# ----------------------------------------------------------------- the noise
def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """`(x * constant) mod 2**32` for int64 `x` in [0, 2**32), in 16-bit halves so that no
    product leaves the int64 range."""
    low = (x & 0xFFFF) * constant
    high = (((x >> 16) * constant) & 0xFFFF) << 16
    return (low + high) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 `x` in [0, 2**32) (any shape, any device)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _HASH_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, _HASH_MUL_2)
    return x ^ (x >> 16)


def hash32_int(x: int) -> int:
    """`hash32` of one Python int (the same function, for keys built on the host)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _HASH_MUL_1) & _MASK32
    x ^= x >> 15
    x = (x * _HASH_MUL_2) & _MASK32
    return x ^ (x >> 16)


def window_key(seed: int, window: int) -> int:
    """The noise key of window `window` of a job seeded `seed` (host side, once per window).

    Windows of a job never share a random stream; neither do seeds that differ in any bit.
    """
    key = hash32_int((seed >> 32) ^ _SEED_HIGH_SALT)
    key = hash32_int(key ^ (seed & _MASK32))
    return hash32_int(key ^ window)


def token_hashes(num_codebooks: int, card: int, device: torch.device | str) -> torch.Tensor:
    """`[K, card]` int64: the step-independent half of every token's noise (computed once)."""
    index = torch.arange(num_codebooks * card, dtype=torch.long, device=device)
    return hash32((index + _TOKEN_SALT) & _MASK32).view(num_codebooks, card)


def step_keys(window_keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """`[B]` int64 keys of `(window key, sequence step)` of each row."""
    return hash32(window_keys ^ ((steps * _STEP_MUL) & _MASK32))


def uniforms(keys: torch.Tensor, hashes: torch.Tensor) -> torch.Tensor:
    """Uniform noise strictly inside (0, 1), float32.

    Args:
        keys: `[B]` int64 step keys (`step_keys`).
        hashes: `[B, K, M]` int64 token hashes of the candidates (gathered from
            `token_hashes`).
    Returns:
        `[B, K, M]` float32: one draw per candidate, a pure function of the key and the
        token (not of `M`, the candidates' order or the other rows).
    """
    bits = hash32(hashes ^ keys.view(-1, 1, 1)) >> (32 - _UNIFORM_BITS)
    return (bits.float() + 0.5) * (2.0 ** -_UNIFORM_BITS)


# ------------------------------------------------------------------ sampling
def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg_coef: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, audiocraft's form: `uncond + (cond - uncond) * coef`.

    Args:
        cond, uncond: `[B, K, card]`.
        cfg_coef: `[B]`.
    """
    return uncond + (cond - uncond) * cfg_coef.view(-1, 1, 1).to(cond.dtype)


NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, keys: torch.Tensor, hashes: torch.Tensor,
                  candidates: int, noise: NoiseFn = uniforms) -> torch.Tensor:
    """Sample one token per codebook for every row, with no host synchronisation.

    The draw is an exponential race: `argmax(p / E)` over the kept tokens with
    `E = -log(U)`, `U` strictly inside (0, 1), is a draw from `p` restricted to them;
    discarded tokens score -1 and are never picked, whatever the noise.

    Args:
        logits: `[B, K, card]` (any float dtype; computed in float32).
        temperature: `[B]` float; 0 means greedy.
        top_k: `[B]` long; 0 means no top-k cut, 1 means greedy.
        top_p: `[B]` float; 0 means no nucleus cut (then `top_k` applies).
        keys: `[B]` int64 step keys (`step_keys`).
        hashes: `[K, card]` int64 (`token_hashes`).
        candidates: the largest `SamplingParams.candidates` among the rows (a host
            int): the draw looks at that many most likely tokens (`topk`, no full sort
            unless a row needs all of them).
        noise: the uniform source (tests inject edge values).
    Returns:
        `[B, K]` long tokens.
    """
    b, k, card = logits.shape
    logits = logits.float()
    greedy = (temperature <= 0) | (top_k == 1)
    temp = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    probs = torch.softmax(logits / temp.view(-1, 1, 1), dim=-1)
    m = max(1, min(candidates, card))
    if m < card:
        values, index = probs.topk(m, dim=-1)
    else:
        values, index = probs.sort(dim=-1, descending=True)
    rank = torch.arange(m, device=logits.device).view(1, 1, -1)
    limit = torch.where(top_k > 0, top_k.clamp(max=card), torch.full_like(top_k, card))
    keep = rank < limit.view(-1, 1, 1)
    if m == card:  # a row may use top-p
        keep_p = (values.cumsum(dim=-1) - values) <= top_p.view(-1, 1, 1).float()
        keep = torch.where((top_p > 0).view(-1, 1, 1), keep_p, keep)
    u = noise(keys, hashes.unsqueeze(0).expand(b, -1, -1).gather(2, index))
    # E > 0 always (at u = 1, -log u is -0.0 and p / -0.0 = -inf would lose to the -1s)
    exponential = (-torch.log(u)).clamp_min(torch.finfo(torch.float32).tiny)
    score = torch.where(keep, values / exponential, torch.full_like(values, -1.0))
    sampled = index.gather(-1, score.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(greedy.view(-1, 1), logits.argmax(dim=-1), sampled)
