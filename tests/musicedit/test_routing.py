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


def test_steps_are_grouped_into_runs_of_one_engine():
    from musicedit.routing import group_steps

    assert group_steps([]) == []
    assert group_steps(["separation", "separation", "generative", "separation"]) == [
        ("separation", 0, 2), ("generative", 2, 3), ("separation", 3, 4)]


def test_a_job_goes_to_the_separation_queue_only_when_every_step_is_a_separation():
    from musicedit.jobs import NormalizedInstruction
    from musicedit.queue import EDIT_QUEUE, SEPARATION_QUEUE, queue_for, worker_queues

    def queue(text: str, choice: str = "auto") -> str:
        steps = normalize_edit(text, STEMS.all)
        return queue_for(NormalizedInstruction.from_steps(
            steps, engines=route(steps, STEMS, choice)))

    assert queue("remove the vocals and the drums") == SEPARATION_QUEUE
    assert queue("replace the vocals with piano") == EDIT_QUEUE
    assert queue("remove the drums", "generative") == EDIT_QUEUE
    assert worker_queues("all") == (EDIT_QUEUE, SEPARATION_QUEUE)
    assert worker_queues("edits") == (EDIT_QUEUE,)
    assert worker_queues("separation") == (SEPARATION_QUEUE,)


def test_settings_give_the_routing_its_stems():
    from musicedit.settings import Settings

    settings = Settings(separation_stems="drums,VOCALS")
    assert settings.engine_stems == EngineStems(("Drums", "Bass", "Piano", "Guitar"),
                                                ("Drums", "Vocals"))
    assert settings.instruction_stems == ["Drums", "Bass", "Piano", "Guitar", "Vocals"]
    off = Settings(separator="none")
    assert off.engine_stems.separation == () and not off.separation_enabled
    with pytest.raises(ValueError, match="needs a separator"):
        Settings(separator="none", worker_role="separation")
