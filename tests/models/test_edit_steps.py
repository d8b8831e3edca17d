"""`models.edit_steps.run_steps`: an edit's steps, group by group, on the `tiny` Instruct-MusicGen
and the `tiny` Demucs separator (random weights, the real classes and loaders), and the
offline CLI's `edit_file` that runs on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from models.audio import write_samples
from models.edit_steps import (
    PROGRESS_FRAME_RATE,
    MissingEngine,
    StepsProgress,
    run_steps,
)
from models.engine import EditRequest
from models.file_edit import FileEditRefused, edit_file
from models.sampling import SamplingParams
from musicedit.instructions import normalize_edit
from musicedit.jobs import InstructionStep, NormalizedInstruction
from musicedit.routing import EngineStems, route

RATE = 44100
STEMS = EngineStems(generative=("Drums", "Bass", "Piano", "Guitar"),
                    separation=("Drums", "Bass", "Vocals", "Guitar", "Piano"))


@pytest.fixture(scope="module")
def separation(tiny_separator) -> Iterator[Any]:
    from models.separation import SeparationEngine

    engine = SeparationEngine(tiny_separator)
    engine.start()
    yield engine
    engine.stop()


def _clip(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 331 * t)
    return np.stack([tone, np.roll(tone, 100)]).astype(np.float32) + 0.01 * rng.standard_normal(
        (2, t.size)).astype(np.float32)


def _steps(text: str, choice: str = "auto") -> list[InstructionStep]:
    steps = normalize_edit(text, STEMS.all)
    return NormalizedInstruction.from_steps(steps, engines=route(steps, STEMS, choice)).all_steps


def _wait(handle: Any, engine: str) -> Any:
    return handle.result(timeout=120)


def _run(text: str, wav: np.ndarray, engine, separation, choice: str = "auto", seed: int = 3,
         **kwargs: Any):
    progress = StepsProgress()
    groups: list[Any] = []
    out = run_steps("job", wav, RATE, _steps(text, choice), SamplingParams(seed=seed),
                    generative=engine, separation=separation, wait=_wait, progress=progress,
                    on_group=groups.append, **kwargs)
    return out, progress, groups


def test_remove_then_extract_on_the_separator_is_one_pass_and_sums_to_the_input(
        engine, separation):
    wav = _clip()
    (removed, progress, groups), (alone, _, _) = (
        _run(text, wav, engine, separation) for text in ("remove the vocals", "only vocals"))
    assert [g.engine for g in groups] == ["separation"] and removed.stage.codes is None
    audio, rate = removed.compose(None)
    other, _ = alone.compose(None)
    assert rate == RATE and audio.shape == wav.shape
    np.testing.assert_allclose(audio + other, wav, atol=1e-5)
    assert progress.value == (progress.total, progress.total) and progress.total == 100
    # two separation steps are still one pass: the vocals and the drums go at once
    _, progress, groups = _run("remove the vocals and the drums", wav, engine, separation)
    assert len(groups) == 1 and groups[0].steps == 2 and progress.total == 100


def test_a_mixed_chain_runs_each_group_on_what_the_last_made(engine, separation):
    """'Replace the vocals with piano': the separator removes the vocals, then the model adds
    piano to the separated clip, sampling as step 1 of the job."""
    wav = _clip(seconds=1.5)
    out, progress, groups = _run("replace the vocals with piano", wav, engine, separation)
    assert [(g.engine, g.steps) for g in groups] == [("separation", 1), ("generative", 1)]
    assert out.stage.codes is not None and progress.total == 2 * 75
    separated, _, _ = _run("remove the vocals", wav, engine, separation)
    base, _ = separated.compose(None)
    np.testing.assert_array_equal(out.base, base)  # what the second group edited
    direct = engine.submit(EditRequest("direct", base, RATE, ("Music piece. Instruct: Add Piano.",),
                                       SamplingParams(seed=3).for_step(1))).result(timeout=120)
    np.testing.assert_array_equal(out.stage.codes.numpy(), direct.codes.numpy())


def test_a_range_is_separated_with_context_and_spliced_linearly(engine, separation):
    wav = _clip(seconds=4.0)
    out, progress, _ = _run("remove the drums", wav, None, separation,
                            time_range=(1.0, 2.0))
    audio, _ = out.compose((1.0, 2.0))
    inside = slice(RATE, 2 * RATE)
    np.testing.assert_array_equal(audio[:, :RATE], wav[:, :RATE])
    np.testing.assert_array_equal(audio[:, 2 * RATE:], wav[:, 2 * RATE:])
    assert not np.allclose(audio[:, inside], wav[:, inside])
    assert out.stage.start_seconds == 0.0  # one second of context before the range
    assert progress.total == int(PROGRESS_FRAME_RATE)  # no MusicGen here: 50 frames a second
    # between the 0.2 s fades, remove + extract of the range is the input again
    alone, _, _ = _run("only the drums", wav, None, separation, time_range=(1.0, 2.0))
    extracted, _ = alone.compose((1.0, 2.0))
    middle = slice(int(1.2 * RATE), int(1.8 * RATE))
    np.testing.assert_allclose((audio + extracted)[:, middle], wav[:, middle], atol=1e-5)
    # the fades are linear: halfway through the first, half of each
    mid_fade = int(1.1 * RATE)
    gain = (mid_fade - RATE + 0.5) / (0.2 * RATE)
    np.testing.assert_allclose(audio[:, mid_fade] + extracted[:, mid_fade],
                               wav[:, mid_fade] * (2 - gain), atol=1e-5)


def test_a_step_without_its_engine_is_refused_before_anything_runs(separation):
    with pytest.raises(MissingEngine) as missing:
        _run("replace the vocals with piano", _clip(), None, separation)
    assert missing.value.engine == "generative"


def test_the_offline_cli_routes_steps_and_loads_musicgen_only_when_needed(tmp_path,
                                                                          model_cache,
                                                                          monkeypatch):
    import models.file_edit

    loads: list[Any] = []
    real_load = models.file_edit.load_model
    monkeypatch.setattr(models.file_edit, "load_model",
                        lambda *a, **k: loads.append(a) or real_load(*a, **k))
    source = tmp_path / "in.wav"
    wav = _clip(seconds=1.0)
    write_samples(source, wav, RATE)
    outputs = {}
    for name, text in (("removed", "remove the vocals"), ("alone", "only the vocals")):
        edited = edit_file(source, text, tmp_path / f"{name}.wav", model="tiny",
                           cache_dir=model_cache, params=SamplingParams(seed=0),
                           device="cpu", separator="tiny")
        assert edited.engines == ("separation",)
        outputs[name] = sf.read(tmp_path / f"{name}.wav", dtype="float32", always_2d=True)[0]
    pcm = sf.read(source, dtype="float32", always_2d=True)[0]
    np.testing.assert_allclose(outputs["removed"] + outputs["alone"], pcm, atol=3 / 32768)
    assert loads == []  # the separator alone did both
    chained = edit_file(source, "replace the vocals with piano", tmp_path / "both.wav",
                        model="tiny", cache_dir=model_cache, params=SamplingParams(seed=0),
                        device="cpu", separator="tiny")
    assert chained.engines == ("separation", "generative") and len(loads) == 1
    with pytest.raises(FileEditRefused, match="stems: Drums, Bass, Piano, Guitar"):
        edit_file(source, "remove the vocals", tmp_path / "x.wav", model="tiny",
                  cache_dir=model_cache, params=SamplingParams(seed=0), device="cpu",
                  separator="none")


def test_an_add_step_routed_to_the_separator_is_refused_by_the_engine(separation):
    """Routing never sends an add to the separator; a step that says so anyway is refused at
    submit by the engine's own check, a ValueError naming the operation (the job fails)."""
    from models.separation import UnsupportedOperation

    step = InstructionStep(operation="add", stem="Drums", text="Music piece. Instruct: Add Drums.",
                           engine="separation")
    with pytest.raises(UnsupportedOperation, match="not 'add'"):
        run_steps("job", _clip(), RATE, [step], SamplingParams(seed=1), generative=None,
                  separation=separation, wait=_wait, progress=StepsProgress())
