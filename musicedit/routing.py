"""Which engine runs each step of an edit: the generative model or the source separator.

Instruct-MusicGen regenerates the whole clip through EnCodec: that is what adding a stem
needs, and it is weak at taking one away (the paper's SI-SDRi is negative for removal and
extraction). A source separator (Demucs `htdemucs_6s`) removes or isolates a stem at far
better quality and keeps the rest of the mix as it was. So, with `engine="auto"`:

- `add X` runs on the generative model (a separator cannot add anything);
- `remove X` and `extract X` run on the separator when it knows X, else on the generative
  model when that knows X;
- `replace X with Y` is already `remove X, then add Y` (`musicedit.instructions`), so it is
  separator-remove X, then generative add Y.

`engine="generative"` or `"separation"` forces one engine for every step and refuses a step
it cannot do. Pure Python: the gateway, the worker and the CLI apply the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from musicedit.errors import InstructionError
from musicedit.instructions import Instruction

Engine = Literal["generative", "separation"]
EngineChoice = Literal["auto", "generative", "separation"]
ENGINE_CHOICES: tuple[EngineChoice, ...] = ("auto", "generative", "separation")


@dataclass(frozen=True)
class EngineStems:
    """The stems each engine serves (as the templates spell them).

    Attributes:
        generative: what the Instruct-MusicGen adapter was trained on (add, remove, extract).
        separation: what the separator separates (remove, extract); empty without one.
    """

    generative: tuple[str, ...]
    separation: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        """Every stem some engine serves, generative first."""
        return self.generative + tuple(s for s in self.separation if s not in self.generative)


def route(steps: Sequence[Instruction], stems: EngineStems,
          choice: EngineChoice = "auto") -> tuple[Engine, ...]:
    """The engine of each step.

    Raises:
        InstructionError: a step no allowed engine can do; the message says why and what
            would work.
    """
    return tuple(_engine(step, stems, choice) for step in steps)


def _engine(step: Instruction, stems: EngineStems, choice: EngineChoice) -> Engine:
    operation, stem = step.operation, step.stem
    generative = stem in stems.generative
    separable = stem in stems.separation and operation in ("remove", "extract")
    if choice == "separation":
        if operation == "add":
            raise InstructionError(
                f"The separation engine cannot add a stem ('{operation} {stem}'): it only "
                "removes or extracts. Send engine=auto or engine=generative for additions.")
        if not separable:
            raise InstructionError(
                f"The separator does not know {stem}; it separates "
                f"{', '.join(stems.separation) or 'nothing (none is deployed)'}.")
        return "separation"
    if choice == "generative" or operation == "add":
        if generative:
            return "generative"
        if operation == "add" and stem in stems.separation:
            raise InstructionError(
                f"No model here can add {stem}: the generative model (Instruct-MusicGen) was "
                f"trained to add {', '.join(stems.generative)}, and the separator can only "
                f"remove or extract {stem}. Try 'remove the {stem.lower()}' or "
                f"'only the {stem.lower()}'.")
        raise InstructionError(
            f"The generative model does not know {stem}; it edits "
            f"{', '.join(stems.generative)}." + (
                f" {stem} can be removed or extracted with engine=auto or engine=separation."
                if stem in stems.separation else ""))
    if separable:
        return "separation"
    if generative:
        return "generative"
    raise InstructionError(f"No engine here knows {stem}.")


def group_steps(engines: Sequence[Engine]) -> list[tuple[Engine, int, int]]:
    """Runs of consecutive steps on one engine, as `(engine, first, end)` step indices: each
    run is one engine job (a separation does a whole run in one pass; the generative engine
    chains a run's steps on the codes), and each run edits what the one before it made."""
    groups: list[tuple[Engine, int, int]] = []
    for index, engine in enumerate(engines):
        if groups and groups[-1][0] == engine:
            groups[-1] = (engine, groups[-1][1], index + 1)
        else:
            groups.append((engine, index, index + 1))
    return groups
