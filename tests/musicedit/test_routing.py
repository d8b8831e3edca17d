"""Which engine runs each step: additions are generative; removals and extractions go to the
separator when it knows the stem; a forced engine refuses what it cannot do, saying why."""

from __future__ import annotations

import pytest

from musicedit.errors import InstructionError
from musicedit.instructions import normalize_edit
from musicedit.routing import EngineStems, route

STEMS = EngineStems(generative=("Drums", "Bass", "Piano", "Guitar"),
                    separation=("Drums", "Bass", "Vocals", "Guitar", "Piano"))


def _route(text: str, choice: str = "auto", stems: EngineStems = STEMS) -> list[tuple]:
    steps = normalize_edit(text, stems.all)
    return [(s.operation, s.stem, e) for s, e in zip(steps, route(steps, stems, choice),
                                                     strict=True)]


def test_auto_routes_by_operation_and_stem():
    assert _route("add drums") == [("add", "Drums", "generative")]
    assert _route("remove the bass") == [("remove", "Bass", "separation")]
    assert _route("only the vocals") == [("extract", "Vocals", "separation")]
    assert _route("replace the guitar with piano") == [
        ("remove", "Guitar", "separation"), ("add", "Piano", "generative")]
    assert _route("remove the vocals, then add drums") == [
        ("remove", "Vocals", "separation"), ("add", "Drums", "generative")]


def test_without_a_separator_everything_is_generative():
    alone = EngineStems(generative=STEMS.generative)
    assert _route("remove the bass", stems=alone) == [("remove", "Bass", "generative")]
    with pytest.raises(InstructionError, match="Unsupported instruction"):
        _route("remove the vocals", stems=alone)


def test_a_forced_engine_takes_every_step_or_says_why_not():
    assert _route("remove the bass", "generative") == [("remove", "Bass", "generative")]
    assert _route("only the drums", "separation") == [("extract", "Drums", "separation")]
    with pytest.raises(InstructionError, match="only removes or extracts"):
        _route("add drums", "separation")
    with pytest.raises(InstructionError, match="does not know Vocals.*engine=auto"):
        _route("remove the vocals", "generative")


def test_adding_vocals_is_refused_with_the_reason():
    with pytest.raises(InstructionError) as refused:
        _route("add vocals")
    message = str(refused.value)
    assert "No model here can add Vocals" in message and "remove the vocals" in message
