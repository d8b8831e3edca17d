"""Training data in code space: edit examples encoded once with the frozen EnCodec.

The codec is frozen during finetuning, so each example's input and target are encoded once
(`encode_examples`) and training reads codes only. A `CodeSet` is saved beside the
run's checkpoints, so a resumed run trains on exactly the same data without re-synthesizing it.
"""
from __future__ import annotations

import typing as tp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import audio
from ..codec import encode as encode_audio
from ..evaluation.examples import EditExample


@dataclass
class CodeSet:
    """Encoded edit examples.

    Attributes:
        inputs, targets: `[N, K, T]` long codes of the input and target clips.
        instructions: N instruction templates.
        tasks, stems: per example, the operation and the stem it names.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    instructions: list[str]
    tasks: list[str]
    stems: list[str]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def stem_names(self) -> tuple[str, ...]:
        """The stems the examples name, in first-seen order (the adapter's stem list)."""
        return tuple(dict.fromkeys(self.stems))

    def subset(self, rows: Sequence[int]) -> CodeSet:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return CodeSet(self.inputs[index], self.targets[index],
                       [self.instructions[i] for i in rows], [self.tasks[i] for i in rows],
                       [self.stems[i] for i in rows])

    def where(self, task: str | None = None, stem: str | None = None) -> CodeSet:
        """The examples of one task and/or stem."""
        return self.subset([i for i in range(len(self))
                            if (task is None or self.tasks[i] == task)
                            and (stem is None or self.stems[i] == stem)])

    def save(self, path: Path) -> None:
        torch.save({"inputs": self.inputs.to(torch.int16), "targets": self.targets.to(torch.int16),
                    "instructions": self.instructions, "tasks": self.tasks, "stems": self.stems},
                   path)

    @classmethod
    def load(cls, path: Path) -> CodeSet:
        data = torch.load(path, weights_only=True)
        return cls(data["inputs"].long(), data["targets"].long(), data["instructions"],
                   data["tasks"], data["stems"])


@torch.no_grad()
def encode_examples(codec: tp.Any, examples: Sequence[EditExample], batch_size: int = 16,
                    progress: tp.Callable[[int], object] | None = None) -> CodeSet:
    """Encode every example's input and target at the codec's rate (mono).

    Args:
        progress: called with the number of examples encoded after each batch.
    Raises:
        ValueError: no examples, or examples of different lengths.
    """
    if not examples:
        raise ValueError("no examples to encode")
    rate = int(codec.sample_rate)
    inputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size]
        for side, out in (("input", inputs), ("target", targets)):
            # Targets may be near-silent (an extraction of a quiet stem): no silence check.
            wavs = torch.cat([audio.to_codec_input(getattr(ex, side), ex.sample_rate, rate,
                                                   silence_peak_threshold=0.0) for ex in batch])
            out.append(encode_audio(codec, wavs).cpu())
        if progress is not None:
            progress(len(batch))
    return CodeSet(torch.cat(inputs), torch.cat(targets), [ex.instruction for ex in examples],
                   [ex.task for ex in examples], [ex.stem for ex in examples])
