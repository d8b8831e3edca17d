"""The finetuning loop: AdamW on the adapters, cosine schedule with warm-up, resumable.

Defaults are the authors' recipe (paper section 4.3 and the release's training config): AdamW at
5e-3 (the paper; the release's config says 1e-4), weight decay 0.05, gradient clipping at 2.0,
cosine schedule with 100 warm-up steps, batches of 8 with 4-step gradient accumulation (32 per
optimizer step), 5,000 optimizer steps; bf16 autocast on a GPU, float32 on the CPU.

A step's batches are drawn from a generator seeded with `(seed, step)`, so a run resumed from
its checkpoint (`checkpoint.pt` in the run directory: adapter, optimizer, schedule, history)
continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import logging
import math
import os
import typing as tp
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..instruct_musicgen import InstructMusicGen
from .data import CodeSet
from .step import adapter_parameters, drop_instructions, edit_loss

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class FinetuneConfig:
    """Optimisation settings (defaults: the authors' recipe)."""

    steps: int = 5000
    batch_size: int = 8
    grad_accum: int = 4
    lr: float = 5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 2.0
    text_dropout: float = 0.3
    precision: str = "auto"       # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot run."""
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup_steps >= 0")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")


@dataclass
class EvalPoint:
    step: int
    loss: float       # mean cross-entropy per target token on the held-out set
    accuracy: float   # share of held-out target tokens predicted exactly (argmax)


@dataclass
class TrainState:
    step: int = 0
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    held_out: list[EvalPoint] = field(default_factory=list)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up to 1 over `warmup` steps, then a cosine to 0 at `total`
    (as `transformers.get_cosine_schedule_with_warmup`, the release's, but the first step
    already trains at `lr / warmup` instead of 0)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def evaluate(model: InstructMusicGen, data: CodeSet, batch_size: int,
             precision: str = "auto") -> tuple[float, float]:
    """Held-out (mean cross-entropy per token, token accuracy), instructions always given."""
    device = next(model.parameters()).device
    total_loss, correct, tokens = 0.0, 0, 0
    for i in range(0, len(data), batch_size):
        rows = range(i, min(i + batch_size, len(data)))
        batch = data.subset(list(rows))
        with _autocast(device, precision):
            out = edit_loss(model, batch.inputs.to(device), batch.targets.to(device),
                            batch.instructions)
        total_loss += float(out.loss) * out.tokens
        correct, tokens = correct + out.correct, tokens + out.tokens
    return total_loss / tokens, correct / tokens


def _save(path: Path, state: TrainState, params: dict[str, torch.nn.Parameter],
          optimizer: torch.optim.Optimizer, config: FinetuneConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": state.step, "config": asdict(config),
                "adapter": {k: v.detach().cpu() for k, v in params.items()},
                "optimizer": optimizer.state_dict(), "train_loss": state.train_loss,
                "held_out": [asdict(p) for p in state.held_out]}, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def _resume(path: Path, params: dict[str, torch.nn.Parameter],
            optimizer: torch.optim.Optimizer) -> TrainState:
    saved = torch.load(path, weights_only=True, map_location="cpu")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved["adapter"][name])
    optimizer.load_state_dict(saved["optimizer"])
    return TrainState(saved["step"], [tuple(x) for x in saved["train_loss"]],
                      [EvalPoint(**p) for p in saved["held_out"]])


def finetune(model: InstructMusicGen, train: CodeSet, held_out: CodeSet, config: FinetuneConfig,
             run_dir: Path, progress: tp.Any = None) -> TrainState:
    """Train the adapters of `model` on `train`; checkpoints go to `run_dir`.

    Resumes from `run_dir/checkpoint.pt` when it exists. Held-out loss and accuracy are
    measured before the first step and every `eval_every` steps.

    Args:
        progress: a tqdm-like bar (`update`, `set_postfix`) over optimizer steps, or None.
    Returns:
        the final state (step, training-loss history, held-out history).
    """
    config.validate()
    device = next(model.parameters()).device
    params = adapter_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / CHECKPOINT_FILE
    state = _resume(checkpoint, params, optimizer) if checkpoint.exists() else TrainState()
    start = state.step  # the schedule continues where the checkpoint left it
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(start + s, config.warmup_steps, config.steps))
    if progress is not None:
        progress.update(state.step)
    # The model stays in eval mode: the LM's dropout is 0 and the frozen T5 must not drop out.
    if not state.held_out:
        state.held_out.append(EvalPoint(0, *evaluate(model, held_out, config.batch_size,
                                                     config.precision)))
    while state.step < config.steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + state.step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(config.grad_accum):
            rows = torch.randint(len(train), (config.batch_size,), generator=generator).tolist()
            batch = train.subset(rows)
            texts = drop_instructions(batch.instructions, config.text_dropout, generator)
            with _autocast(device, config.precision):
                out = edit_loss(model, batch.inputs.to(device), batch.targets.to(device), texts)
            (out.loss / config.grad_accum).backward()
            step_loss += float(out.loss.detach()) / config.grad_accum
        torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
        optimizer.step()
        schedule.step()
        state.step += 1
        state.train_loss.append((state.step, step_loss))
        if state.step % config.eval_every == 0 or state.step == config.steps:
            state.held_out.append(EvalPoint(state.step, *evaluate(
                model, held_out, config.batch_size, config.precision)))
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            _save(checkpoint, state, params, optimizer, config)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.3f}",
                                 held_out=f"{state.held_out[-1].loss:.3f}")
    return state
