"""The stems come from the model: its metadata (or the release's four), and everything that
accepts instructions (reference edit, CLI, worker) uses the loaded model's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli.main import main
from models.checkpoint import CheckpointError
from models.loader import (
    ADAPTER_FILE,
    METADATA_FILE,
    RELEASE_STEMS,
    ModelFiles,
    UnsupportedStems,
    load_model,
    model_stems,
)
from models.presets import configs, write_random_model
from models.reference import edit
from models.sampling import SamplingParams
from musicedit.errors import InstructionError
from musicedit.settings import Settings
from worker.runtime import WorkerRuntime

VOCAL_STEMS = ("Drums", "Vocals")


def _tone(seconds=1.0, rate=32000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None]


@pytest.fixture(scope="module")
def vocal_model_dir(tmp_path_factory):
    """A tiny model whose adapter was 'trained' on Drums and Vocals."""
    directory = tmp_path_factory.mktemp("vocal-model")
    write_random_model(directory, configs.TINY_LM, configs.TINY_CODEC, seed=3, stems=VOCAL_STEMS)
    return directory


def _files(directory):
    return ModelFiles(base=str(directory), t5=str(directory / "t5"),
                      adapter=str(directory / ADAPTER_FILE))


def test_presets_write_the_release_stems(tiny_files, tiny):
    metadata = json.loads((Path(tiny_files.adapter).parent / METADATA_FILE).read_text())
    assert metadata == {"stems": list(RELEASE_STEMS)}
    assert tiny.stems == RELEASE_STEMS == ("Drums", "Bass", "Piano", "Guitar")


def test_loaded_model_carries_its_metadata_stems(vocal_model_dir):
    model = load_model(_files(vocal_model_dir))
    assert model.stems == VOCAL_STEMS
    result = edit(model, _tone(), 32000, "add vocals", SamplingParams(seed=1))
    assert result.instruction == "Music piece. Instruct: Add Vocals."
    with pytest.raises(InstructionError, match="stems: Drums, Vocals"):
        edit(model, _tone(), 32000, "add bass")


def test_without_metadata_the_release_stems_apply(vocal_model_dir, tmp_path):
    copy_dir = tmp_path / "m"
    shutil.copytree(vocal_model_dir, copy_dir)
    (copy_dir / METADATA_FILE).unlink()
    assert model_stems(_files(copy_dir)) == RELEASE_STEMS
    assert model_stems(ModelFiles(base="facebook/musicgen-large", t5="t5-base",
                                  adapter="ldzhangyx/instruct-MusicGen:finetuned.ckpt")) \
        == RELEASE_STEMS


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read the model metadata"),
    ('{"stems": []}', "'stems' must be a list"),
    ('{"stems": ["Drums", "Drums"]}', "'stems' must be a list"),
    ('{"stems": ["Drums", ""]}', "'stems' must be a list"),
    ('{"stems": ["Drums"], "stem": ["Bass"]}', "unexpected key 'stem'"),
])
def test_malformed_metadata_names_the_file(vocal_model_dir, tmp_path, content, message):
    copy_dir = tmp_path / "m"
    shutil.copytree(vocal_model_dir, copy_dir)
    (copy_dir / METADATA_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(_files(copy_dir))
    assert str(copy_dir / METADATA_FILE) in str(err.value)


def test_cli_uses_the_models_stems(vocal_model_dir, tmp_path, capsys):
    src = tmp_path / "in.wav"
    sf.write(src, _tone().T, 32000)
    out = tmp_path / "out.wav"

    def run(instruction):
        return main(["edit", str(src), instruction, "-o", str(out), "--model",
                     str(vocal_model_dir), "--device", "cpu", "--separator", "none"])

    assert run("add guitar") == 2
    assert "stems: Drums, Vocals" in capsys.readouterr().err
    assert run("only vocals") == 0
    assert "Music piece. Instruct: Only Vocals." in capsys.readouterr().out
    assert sf.info(out).samplerate == 32000


def test_worker_refuses_stems_its_model_does_not_know(vocal_model_dir, tmp_path):
    settings = Settings(model=str(vocal_model_dir), data_dir=tmp_path, device="cpu",
                        stems=["Drums", "Bass"])
    with pytest.raises(UnsupportedStems) as err:
        WorkerRuntime.start(settings, requeue=lambda job_id: None)
    message = str(err.value)
    assert "MUSICEDIT_STEMS lists Bass" in message and "Drums,Vocals" in message
