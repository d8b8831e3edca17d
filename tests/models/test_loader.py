"""One loader for every source: the release layout loads, mistakes are named, no code runs."""
from __future__ import annotations

import fnmatch
import logging
import re
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from models import loader
from models.attention import NoCache
from models.checkpoint import CheckpointError, OpaqueObject, read_checkpoint
from models.instruct_musicgen import AdapterConfig, InstructMusicGen
from models.loader import (
    ADAPTER_FILE,
    CODEC_FILE,
    LM_FILE,
    RELEASE_STEMS,
    ModelFiles,
    build_lm,
    load_model,
)
from models.presets import LARGE, configs, resolve_model, write_random_model


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = 6
    codes = torch.randint(0, model.card, (1, model.num_codebooks, frames), generator=g)
    cond = torch.randint(0, model.card, (1, model.num_codebooks, frames), generator=g)
    pattern = model.lm.pattern_provider.get_pattern(frames)
    seq, _, _ = pattern.build_pattern_sequence(codes, model.special_token_id,
                                               keep_only_valid_steps=True)
    with torch.no_grad():
        text = model.encode_text(model.text_embeddings(["Music piece. Instruct: Add Drums."]))
        return model(seq, torch.arange(seq.shape[-1]).view(1, -1), text,
                     model.encode_condition(cond), NoCache())


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    directory = tmp_path_factory.mktemp("release-layout")
    model = write_random_model(directory, configs.TINY_LM, configs.TINY_CODEC, seed=7)
    return directory, model


def _files(directory):
    return ModelFiles(base=str(directory), t5=str(directory / "t5"),
                      adapter=str(directory / ADAPTER_FILE))


def _copy(written, tmp_path):
    directory, _ = written
    copy_dir = tmp_path / "m"
    shutil.copytree(directory, copy_dir)
    return copy_dir


def _edit_adapter(copy_dir, change):
    pkg = torch.load(copy_dir / ADAPTER_FILE, weights_only=True)
    change(pkg["state_dict"])
    torch.save(pkg, copy_dir / ADAPTER_FILE)


_LAYER0 = "model.peft_model.lm.transformer.base_model.model.layers.0."
_CROSS_QKV = re.compile(
    r"\.cross_attention\.(q_proj\.base_layer|k_proj|v_proj\.base_layer)\.weight$")


def test_release_layout_round_trip_gives_identical_logits(written):
    directory, original = written
    keys = read_checkpoint(directory / ADAPTER_FILE)["state_dict"]
    # The file is in the released layout, duplicates included.
    assert "model.cp_transformer.pos_emb" in keys
    assert ("model.peft_model.lm.transformer.base_model.model.layers.1.cross_attention."
            "q_proj.lora_A.default.weight") in keys
    layer0 = "model.peft_model.lm.transformer.base_model.model.layers.0."
    assert layer0 + "self_attn.q_proj.weight" in keys
    loaded = load_model(_files(directory), merge_lora=False)
    assert torch.equal(_logits(loaded.lm), _logits(original))
    merged = load_model(_files(directory), merge_lora=True)
    torch.testing.assert_close(_logits(merged.lm), _logits(original), rtol=1e-5, atol=1e-5)


def test_release_key_names_are_the_facts_files(written):
    """The names, written out as ../shared/reference/instruct-musicgen-facts.md spells them
    (not derived from the code that writes and reads them), are in the file, and the loader
    reads each one: changing its tensor changes the logits."""
    directory, original = written
    keys = set(read_checkpoint(directory / ADAPTER_FILE)["state_dict"])
    layers = original.num_layers
    lora = ("model.peft_model.lm.transformer.base_model.model.layers.{n}.cross_attention."
            "{proj}.lora_{ab}.default.weight")
    base = "model.peft_model.lm.transformer.base_model.model.layers.{n}.cross_attention.{name}"
    expected = {"model.cp_transformer.pos_emb", "model.cp_transformer.gates"}
    for n in range(layers):
        expected.add(f"model.cp_transformer.merge_linear.{n}.weight")
        expected |= {lora.format(n=n, proj=proj, ab=ab)
                     for proj in ("q_proj", "v_proj") for ab in ("A", "B")}
        expected |= {base.format(n=n, name=name) for name in (
            "q_proj.base_layer.weight", "v_proj.base_layer.weight", "k_proj.weight")}
        expected.add(f"model.peft_model.lm.transformer.base_model.model.layers.{n}."
                     "self_attn.q_proj.weight")  # unused in the release, present in the file
        expected.add(f"model.cp_transformer.layers.{n}.linear1.weight")  # the shared copies
    assert expected <= keys, sorted(expected - keys)
    assert not any("t5" in k for k in keys)  # no T5 weights (its output_proj is the LM's)

    reference = _logits(load_model(_files(directory), merge_lora=False).lm)
    for key in ("model.peft_model.lm.transformer.base_model.model.layers.1.cross_attention."
                "v_proj.lora_B.default.weight",
                "model.peft_model.lm.transformer.base_model.model.layers.0.cross_attention."
                "q_proj.base_layer.weight",
                "model.cp_transformer.merge_linear.1.weight",
                "model.cp_transformer.gates"):
        state = read_checkpoint(directory / ADAPTER_FILE)["state_dict"]
        changed = directory.parent / f"changed-{key.replace('.', '_')}"
        shutil.copytree(directory, changed)
        _edit_adapter(changed, lambda sd, key=key, state=state: sd.__setitem__(
            key, state[key] + 0.5))
        assert not torch.allclose(_logits(load_model(_files(changed), merge_lora=False).lm),
                                  reference), f"{key} is not read"


def test_lora_alpha_comes_from_the_hyper_parameters(written, tmp_path, caplog):
    """The LoRA scale is alpha / rank: alpha is read from the checkpoint's hyper-parameters
    (also when nested), the release's 64 only when they do not say."""
    from models.loader import adapter_config_from_checkpoint

    directory, _ = written
    assert adapter_config_from_checkpoint(directory / ADAPTER_FILE).lora_alpha == 64.0
    reference = _logits(load_model(_files(directory), merge_lora=False).lm)
    copy_dir = _copy(written, tmp_path)
    pkg = torch.load(copy_dir / ADAPTER_FILE, weights_only=True)
    pkg["hyper_parameters"] = {"lr": 1e-4, "model": {"peft": {"lora_alpha": 16}}}
    torch.save(pkg, copy_dir / ADAPTER_FILE)
    assert adapter_config_from_checkpoint(copy_dir / ADAPTER_FILE).lora_alpha == 16.0
    assert not torch.allclose(_logits(load_model(_files(copy_dir), merge_lora=False).lm),
                              reference)
    # no alpha: the release's; with a rank other than the expected one the guess is logged
    del pkg["hyper_parameters"]
    torch.save(pkg, copy_dir / ADAPTER_FILE)
    with caplog.at_level(logging.WARNING, logger="models.loader"):
        assert adapter_config_from_checkpoint(copy_dir / ADAPTER_FILE).lora_alpha == 64.0
        assert "no lora_alpha" not in caplog.text  # rank 32, alpha 64: the release's pair
        config = adapter_config_from_checkpoint(copy_dir / ADAPTER_FILE,
                                                AdapterConfig(lora_rank=16, lora_alpha=32.0))
    assert (config.lora_rank, config.lora_alpha) == (32, 32.0)
    assert "LoRA rank 32 but no lora_alpha hyper-parameter: assuming alpha 32" in caplog.text


def test_cross_attention_qkv_come_from_the_adapter_checkpoint(written, tmp_path):
    """The release's split cross-attention q/k/v override MusicGen's in_proj_weight."""
    directory, _ = written
    copy_dir = tmp_path / "m"
    shutil.copytree(directory, copy_dir)
    pkg = torch.load(copy_dir / ADAPTER_FILE, weights_only=True)
    key = "model.peft_model.lm.transformer.base_model.model.layers.0.cross_attention.k_proj.weight"
    pkg["state_dict"][key] = torch.full_like(pkg["state_dict"][key], 0.125)
    torch.save(pkg, copy_dir / ADAPTER_FILE)
    model = load_model(_files(copy_dir), merge_lora=False).lm
    d = model.dim
    w = model.lm.transformer.layers[0].cross_attention.in_proj_weight
    assert torch.all(w[d:2 * d] == 0.125)


@pytest.mark.parametrize("mutation, message", [
    ("missing", "missing key 'model.cp_transformer.gates'"),
    ("unexpected", "unexpected key 'model.extra_head.weight'"),
    ("shape", "key 'model.cp_transformer.merge_linear.0.weight' has shape (3, 3)"),
])
def test_adapter_key_errors_name_key_and_file(written, tmp_path, mutation, message):
    directory, _ = written
    copy_dir = tmp_path / "m"
    shutil.copytree(directory, copy_dir)
    pkg = torch.load(copy_dir / ADAPTER_FILE, weights_only=True)
    state = pkg["state_dict"]
    if mutation == "missing":
        del state["model.cp_transformer.gates"]
    elif mutation == "unexpected":
        state["model.extra_head.weight"] = torch.zeros(2)
    else:
        state["model.cp_transformer.merge_linear.0.weight"] = torch.zeros(3, 3)
    torch.save(pkg, copy_dir / ADAPTER_FILE)
    with pytest.raises(CheckpointError) as err:
        load_model(_files(copy_dir))
    assert message in str(err.value)
    assert str(copy_dir / ADAPTER_FILE) in str(err.value)


@pytest.mark.parametrize("file, key", [(LM_FILE, "linears.0.weight"),
                                       (CODEC_FILE, "quantizer.vq.layers.0._codebook.embed")])
@pytest.mark.parametrize("mutation", ["missing", "unexpected", "shape"])
def test_base_key_errors_name_key_and_file(written, tmp_path, file, key, mutation):
    copy_dir = _copy(written, tmp_path)
    pkg = torch.load(copy_dir / file, weights_only=True)
    state = pkg["best_state"]
    assert key in state
    if mutation == "missing":
        del state[key]
        message = f"missing key {key!r}"
    elif mutation == "unexpected":
        key = key.replace(".0.", ".9.")
        state[key] = torch.zeros(2)
        message = f"unexpected key {key!r}"
    else:
        state[key] = torch.zeros(3, 3)
        message = f"key {key!r} has shape (3, 3)"
    torch.save(pkg, copy_dir / file)
    with pytest.raises(CheckpointError) as err:
        load_model(_files(copy_dir))
    assert message in str(err.value)
    assert str(copy_dir / file) in str(err.value)


@pytest.mark.parametrize("key", [
    _LAYER0 + "cross_attention.q_proj.lora_a.default.weight",  # misspelled LoRA key
    _LAYER0 + "self_attn.o_proj.weight",                        # no such split projection
    "model.peft_model.lm.emb.9.weight",                         # codebook the LM does not have
])
def test_misspelled_keys_under_the_frozen_prefix_are_reported(written, tmp_path, key):
    """Only the frozen copies the release is known to hold are skipped, nothing else under
    `model.peft_model.lm.`."""
    copy_dir = _copy(written, tmp_path)
    _edit_adapter(copy_dir, lambda state: state.__setitem__(key, torch.zeros(2)))
    with pytest.raises(CheckpointError, match=f"unexpected key {re.escape(repr(key))}") as err:
        load_model(_files(copy_dir))
    assert str(copy_dir / ADAPTER_FILE) in str(err.value)


def test_adapter_without_cross_attention_qkv_keeps_musicgens(written, tmp_path, caplog):
    """The base cross-attention q/k/v are taken from the adapter only when it holds them."""
    copy_dir = _copy(written, tmp_path)
    _edit_adapter(copy_dir, lambda state: [state.pop(k) for k in list(state)
                                           if _CROSS_QKV.search(k) and "peft_model" in k])
    pkg = torch.load(copy_dir / LM_FILE, weights_only=True)
    in_proj = "transformer.layers.0.cross_attention.in_proj_weight"
    pkg["best_state"][in_proj] = torch.full_like(pkg["best_state"][in_proj], 0.25)
    torch.save(pkg, copy_dir / LM_FILE)
    with caplog.at_level(logging.WARNING, logger="models.loader"):
        model = load_model(_files(copy_dir), merge_lora=False).lm
    assert torch.all(model.lm.transformer.layers[0].cross_attention.in_proj_weight == 0.25)
    assert any("no base cross-attention q/k/v" in r.getMessage() for r in caplog.records)


def test_adapter_with_some_cross_attention_qkv_is_an_error(written, tmp_path):
    copy_dir = _copy(written, tmp_path)
    key = _LAYER0 + "cross_attention.k_proj.weight"
    _edit_adapter(copy_dir, lambda state: state.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key {re.escape(repr(key))}"):
        load_model(_files(copy_dir))


def _rewrite_t5(t5_dir, change):
    state = load_file(t5_dir / "model.safetensors")
    change(state)
    save_file(state, t5_dir / "model.safetensors", metadata={"format": "pt"})


_T5_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


@pytest.mark.parametrize("mutation, message", [
    ("missing", f"missing key {_T5_BIAS!r}"),
    ("unexpected", "unexpected key 'bogus.weight'"),
    ("shape", f"key {_T5_BIAS!r} has shape (3, 3)"),
])
def test_t5_key_errors_name_key_and_file(written, tmp_path, mutation, message):
    """T5 weights get the same checks as the rest: nothing missing is initialised at random."""
    copy_dir = _copy(written, tmp_path)
    changes = {"missing": lambda state: state.pop(_T5_BIAS),
               "unexpected": lambda state: state.__setitem__("bogus.weight", torch.zeros(2)),
               "shape": lambda state: state.__setitem__(_T5_BIAS, torch.zeros(3, 3))}
    _rewrite_t5(copy_dir / "t5", changes[mutation])
    with pytest.raises(CheckpointError) as err:
        load_model(_files(copy_dir))
    assert message in str(err.value)
    assert str(copy_dir / "t5" / "model.safetensors") in str(err.value)


def test_large_preset_names_the_released_weights(tmp_path):
    assert resolve_model("large", tmp_path) == LARGE == ModelFiles(
        base="facebook/musicgen-large", t5="t5-base",
        adapter="ldzhangyx/instruct-MusicGen:finetuned.ckpt")


class _FakeHub:
    """Stands in for the hub: records what the loader asks for, serves the tiny model's files."""

    def __init__(self, directory, t5_dirs):
        self.directory = directory
        self.t5_dirs = list(t5_dirs)
        self.files: list[tuple[str, str]] = []
        self.snapshots: list[tuple[str, list[str]]] = []

    def hf_hub_download(self, repo_id, filename):
        self.files.append((repo_id, filename))
        return str(self.directory / filename)

    def snapshot_download(self, repo_id, allow_patterns):
        self.snapshots.append((repo_id, list(allow_patterns)))
        return str(self.t5_dirs.pop(0))


def _fetched(patterns, name):
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def test_large_preset_downloads_the_released_files(written, monkeypatch, tmp_path):
    directory, original = written
    hub = _FakeHub(directory, [directory / "t5"])
    monkeypatch.setattr(loader, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(loader, "snapshot_download", hub.snapshot_download)
    loaded = load_model(resolve_model("large", tmp_path), merge_lora=False)
    assert sorted(hub.files) == [("facebook/musicgen-large", CODEC_FILE),
                                 ("facebook/musicgen-large", LM_FILE),
                                 ("ldzhangyx/instruct-MusicGen", ADAPTER_FILE)]
    [(repo, patterns)] = hub.snapshots
    assert repo == "t5-base"
    for needed in ("config.json", "spiece.model", "tokenizer.json", "model.safetensors"):
        assert _fetched(patterns, needed), needed
    # One copy of the PyTorch weights: not the .bin beside the safetensors, no other framework.
    for unwanted in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot",
                     "onnx/encoder_model.onnx", "onnx/config.json"):
        assert not _fetched(patterns, unwanted), unwanted
    assert loaded.stems == RELEASE_STEMS  # the release has no metadata file
    assert torch.equal(_logits(loaded.lm), _logits(original))


def test_t5_from_the_hub_falls_back_to_bin_weights(written, tmp_path, monkeypatch):
    """A T5 repo without safetensors is fetched again for its .bin weights only."""
    directory, original = written
    config_only = tmp_path / "config-only"
    bin_dir = tmp_path / "bin"
    shutil.copytree(directory / "t5", bin_dir)
    (bin_dir / "model.safetensors").rename(tmp_path / "unused.safetensors")
    torch.save(load_file(tmp_path / "unused.safetensors"), bin_dir / "pytorch_model.bin")
    shutil.copytree(bin_dir, config_only, ignore=shutil.ignore_patterns("*.bin"))
    hub = _FakeHub(directory, [config_only, bin_dir])
    monkeypatch.setattr(loader, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(loader, "snapshot_download", hub.snapshot_download)
    loaded = load_model(ModelFiles(base=str(directory), t5="t5-base",
                                   adapter=str(directory / ADAPTER_FILE)), merge_lora=False)
    (_, first), (_, second) = hub.snapshots
    assert _fetched(first, "model.safetensors") and not _fetched(first, "pytorch_model.bin")
    assert _fetched(second, "pytorch_model.bin") and not _fetched(second, "model.safetensors")
    assert torch.equal(_logits(loaded.lm), _logits(original))


def test_small_random_config_builds():
    """The benchmark preset's config builds MusicGen-small's shapes (on the meta device)."""
    cfg = OmegaConf.create(configs.lm_xp_cfg(configs.MUSICGEN_SMALL))
    with torch.device("meta"):
        model = InstructMusicGen(build_lm(cfg, device="meta"), AdapterConfig())
    assert (model.num_layers, model.dim, model.card, model.num_codebooks) == (24, 1024, 2048, 4)
    assert model.audio_fusion.pos_emb.shape == (25, 501, 1024)


class _Payload:
    """Unpickling this with plain pickle would run `call(*args)`, each of which creates the
    marker file: a stand-in for hostile code in a downloaded checkpoint."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def _hostile_calls(marker: str) -> dict[str, tuple]:
    import builtins
    import os
    import subprocess

    touch = f"open({marker!r}, 'w').close()"
    return {
        "open": (builtins.open, (marker, "w")),
        "os.system": (os.system, (f"touch {marker}",)),
        "eval": (builtins.eval, (touch,)),
        "exec": (builtins.exec, (touch,)),
        "subprocess.Popen": (subprocess.Popen, (["touch", marker],)),
        "__import__": (builtins.__import__, ("this",)),  # importing runs the module's code
    }


@pytest.mark.parametrize("where", ["hyper_parameters", "state_dict"])
@pytest.mark.parametrize("call", list(_hostile_calls("x")))
def test_checkpoint_reader_runs_no_code(tmp_path, call, where):
    import sys

    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    payload = _Payload(*_hostile_calls(str(marker))[call])
    pkg = {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"lr": 1e-4}}
    pkg[where]["hostile"] = payload
    torch.save(pkg, path)
    sys.modules.pop("this", None)
    loaded = read_checkpoint(path)
    if call == "subprocess.Popen":
        time.sleep(0.2)  # a child it spawned would have touched the marker by now
    assert not marker.exists()
    assert "this" not in sys.modules
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert isinstance(loaded[where]["hostile"], OpaqueObject)  # inert, nothing was called


def test_codec_pointer_to_an_untrusted_model_is_refused(written, tmp_path):
    """audiocraft's exported codec file may name a published model instead of holding one;
    only Meta's EnCodec names are followed, anything else is an error naming the file."""
    copy_dir = _copy(written, tmp_path)
    torch.save({"pretrained": "someone/evil-codec"}, copy_dir / CODEC_FILE)
    with pytest.raises(CheckpointError, match=r"compression_state_dict.bin: points at "
                       r"compression model 'someone/evil-codec'; only facebook/encodec_24khz"):
        load_model(_files(copy_dir))


def test_unknown_model_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="tiny, small-random, large"):
        resolve_model("/no/such/dir", tmp_path)


@pytest.mark.slow
def test_small_random_preset_is_written_and_loaded_by_the_real_loader(tmp_path):
    """The benchmark preset: MusicGen-small's dimensions and the real EnCodec's, written in
    the release layout (~2.3 GB) and read back through `load_model` like real weights."""
    files = resolve_model("small-random", tmp_path)
    model = load_model(files, merge_lora=False)
    lm = model.lm
    assert (lm.num_layers, lm.dim, lm.card, lm.num_codebooks) == (24, 1024, 2048, 4)
    assert lm.audio_fusion.pos_emb.shape == (25, 501, 1024)
    assert model.sample_rate == 32000 and model.frame_rate == 50
    assert model.stems == RELEASE_STEMS
    assert resolve_model("small-random", tmp_path) == files  # written once, then reused
    logits = _logits(lm)
    assert logits.shape[-1] == 2048 and torch.isfinite(logits).all()
