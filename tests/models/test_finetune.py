"""`musicedit finetune`: adapters only, resumable, saved as a model the loader and service
accept, and it learns (in code space: the tiny codec is random)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cli.main import main
from models.loader import ADAPTER_FILE, CODEC_FILE, load_model
from models.presets import configs, resolve_model, write_random_model
from models.reference import edit
from models.sampling import SamplingParams
from models.training.data import CodeSet
from models.training.loop import CHECKPOINT_FILE, FinetuneConfig, evaluate, finetune
from models.training.run import FinetuneSettings, prepare_data
from models.training.step import reset_adapter
from musicedit.instructions import normalize_instruction
from musicedit.settings import Settings


def _run(*argv: str) -> int:
    """`musicedit finetune ...` through the installed entry point's `main`."""
    return main(["finetune", *argv])


def test_finetune_writes_a_model_with_its_new_stem(tiny_files, model_cache, tmp_path, capsys):
    out = tmp_path / "strings-model"
    assert _run("--model", "tiny", "--cache-dir", str(model_cache), "--device", "cpu",
                "--output", str(out), "--stems", "strings", "--train-examples", "6",
                "--held-out-examples", "3", "--seconds", "2", "--steps", "3",
                "--batch-size", "2", "--grad-accum", "2", "--warmup-steps", "1") == 0
    printed = capsys.readouterr()
    assert "held-out loss" in printed.out and "steps: 100%" in printed.err
    # the release's stems are kept (the model's adapter was continued) and Strings added
    assert json.loads((out / "musicedit.json").read_text()) == {
        "stems": ["Drums", "Bass", "Piano", "Guitar", "Strings"]}
    assert (out / CODEC_FILE).is_symlink() and (out / "t5").is_dir()
    model = load_model(resolve_model(str(out), model_cache), merge_lora=False)
    assert model.stems[-1] == "Strings"
    # what was trained is what the loader reads back
    saved = torch.load(out / "run" / CHECKPOINT_FILE, weights_only=True)
    assert saved["step"] == 3
    torch.testing.assert_close(model.lm.audio_fusion.gates, saved["adapter"]["audio_fusion.gates"])
    torch.testing.assert_close(model.lm.text_lora[1].v_B, saved["adapter"]["text_lora.1.v_B"])
    ckpt = torch.load(out / ADAPTER_FILE, weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["lr"] == 5e-3
    # the service accepts the stem: the gateway's settings and the model's instructions
    assert Settings(stems=["strings"]).stems == ["Strings"]
    served = load_model(resolve_model(str(out), model_cache))
    result = edit(served, torch.randn(1, 32000).numpy() * 0.1, 32000, "only strings",
                  SamplingParams(seed=0))
    assert result.instruction == normalize_instruction("only strings", served.stems).text \
        == "Music piece. Instruct: Only Strings."


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A progress bar that interrupts the run after `n` optimizer steps (a killed process)."""

    def __init__(self, n: int):
        self.n, self.done = n, 0

    def update(self, k: int = 1) -> None:
        self.done += k
        if self.done >= self.n:
            raise _Interrupt

    def set_postfix(self, **_) -> None:
        pass


def test_an_interrupted_run_resumes_to_the_same_adapter(tiny_files, model_cache, tmp_path):
    settings = FinetuneSettings(output=tmp_path / "m", model="tiny", cache_dir=model_cache,
                                train_examples=6, held_out_examples=3, seconds=1.0,
                                config=FinetuneConfig(steps=4, batch_size=2, grad_accum=1,
                                                      warmup_steps=1, checkpoint_every=1))
    codec = load_model(tiny_files).codec
    train, held_out = prepare_data(settings, codec)

    def fresh():
        return load_model(tiny_files, merge_lora=False).lm

    straight = fresh()
    finetune(straight, train, held_out, settings.config, tmp_path / "straight")
    interrupted = fresh()
    with pytest.raises(_Interrupt):
        finetune(interrupted, train, held_out, settings.config, tmp_path / "resumed",
                 _StopAfter(2))
    resumed = fresh()  # a new process: the adapter comes from the checkpoint
    state = finetune(resumed, train, held_out, settings.config, tmp_path / "resumed")
    assert state.step == 4 and [p.step for p in state.held_out] == [0, 4]
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # only the adapter moved; MusicGen stayed frozen
    base = fresh()
    assert not torch.equal(resumed.audio_fusion.gates, base.audio_fusion.gates)
    for (name, a), b in zip(resumed.lm.named_parameters(), base.lm.parameters(), strict=False):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def fitted_model_dir(tmp_path_factory):
    """The tiny preset with its codec's codebooks set by audiocraft's own k-means on synthesized
    songs, as EnCodec training initialises them: the random tiny codec maps every clip to one
    code, which leaves nothing in code space to learn."""
    from models.evaluation.stem_sets import SynthStemSet
    from models.evaluation.synth import SynthSettings
    from models.loader import load_codec
    directory = tmp_path_factory.mktemp("fitted-tiny")
    write_random_model(directory, configs.TINY_LM, configs.TINY_CODEC, seed=0)
    package = torch.load(directory / CODEC_FILE, weights_only=False)
    codec = load_codec(str(directory), torch.device("cpu"))
    songs = SynthStemSet(7, 3, SynthSettings(seconds=6.0))
    mixes = torch.cat([torch.from_numpy(sum(t.stems.values()))[None] for t in songs])
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in codec.quantizer.vq.layers:
            layer._codebook.inited.fill_(0)
        codec.quantizer.vq(codec.encoder(mixes))
    package["best_state"] = codec.state_dict()
    torch.save(package, directory / "codec.tmp")
    os.replace(directory / "codec.tmp", directory / CODEC_FILE)  # the old file is memory-mapped
    return directory


@pytest.mark.slow
def test_training_to_extract_a_stem_learns_its_held_out_codes(fitted_model_dir, model_cache,
                                                               tmp_path):
    """Held-out songs (never trained on): the loss falls well below where it started, and the
    trained adapter predicts the held-out drum codes better than the untrained one."""
    settings = FinetuneSettings(
        output=tmp_path / "m", model=str(fitted_model_dir), cache_dir=model_cache,
        stems=("Drums",), tasks=("extract",), train_examples=64, held_out_examples=16,
        seconds=2.0, from_scratch=True,
        config=FinetuneConfig(steps=150, batch_size=8, grad_accum=1, warmup_steps=20,
                              eval_every=150, checkpoint_every=150))
    loaded = load_model(resolve_model(str(fitted_model_dir), model_cache), merge_lora=False)
    train, held_out = prepare_data(settings, loaded.codec)
    assert len({int(c) for c in held_out.targets[:, 0].unique()}) > 8  # real code diversity
    reset_adapter(loaded.lm, seed=0)
    untrained_loss, untrained_accuracy = evaluate(loaded.lm, held_out, 8)
    state = finetune(loaded.lm, train, held_out, settings.config, Path(tmp_path / "run"))
    first, last = state.held_out[0], state.held_out[-1]
    assert first.loss == pytest.approx(untrained_loss)
    assert last.loss < 0.75 * first.loss
    assert last.accuracy > untrained_accuracy + 0.2
    assert isinstance(held_out, CodeSet) and set(held_out.tasks) == {"extract"}
