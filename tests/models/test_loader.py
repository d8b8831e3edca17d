"""One loader for every source: the release layout loads, mistakes are named, no code runs."""
from __future__ import annotations

import shutil

import pytest
import torch

from models.checkpoint import CheckpointError, read_checkpoint
from models.instruct_musicgen import NoCache
from models.loader import ADAPTER_FILE, LM_FILE, ModelFiles, load_model
from models.presets import configs, resolve_model, write_random_model


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = 6
    codes = torch.randint(0, model.card, (1, model.num_codebooks, frames), generator=g)
    cond = torch.randint(0, model.card, (1, model.num_codebooks, frames), generator=g)
    pattern = model.lm.pattern_provider.get_pattern(frames)
    seq, _, _ = pattern.build_pattern_sequence(codes, model.special_token_id, keep_only_valid_steps=True)
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


def test_release_layout_round_trip_gives_identical_logits(written):
    directory, original = written
    keys = read_checkpoint(directory / ADAPTER_FILE)["state_dict"]
    # The file is in the released layout, duplicates included.
    assert "model.cp_transformer.pos_emb" in keys
    assert ("model.peft_model.lm.transformer.base_model.model.layers.1.cross_attention."
            "q_proj.lora_A.default.weight") in keys
    assert "model.peft_model.lm.transformer.base_model.model.layers.0.self_attn.q_proj.weight" in keys
    loaded = load_model(_files(directory), merge_lora=False)
    assert torch.equal(_logits(loaded.lm), _logits(original))
    merged = load_model(_files(directory), merge_lora=True)
    torch.testing.assert_close(_logits(merged.lm), _logits(original), rtol=1e-5, atol=1e-5)


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


def test_base_key_errors_name_key_and_file(written, tmp_path):
    directory, _ = written
    copy_dir = tmp_path / "m"
    shutil.copytree(directory, copy_dir)
    pkg = torch.load(copy_dir / LM_FILE, weights_only=True)
    del pkg["best_state"]["linears.0.weight"]
    torch.save(pkg, copy_dir / LM_FILE)
    with pytest.raises(CheckpointError, match=r"missing key 'linears.0.weight'") as err:
        load_model(_files(copy_dir))
    assert str(copy_dir / LM_FILE) in str(err.value)


class _Payload:
    """Unpickling this with plain pickle would create a file: a stand-in for hostile code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_reader_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": _Payload(str(marker))}, path)
    pkg = read_checkpoint(path)
    assert not marker.exists()
    assert torch.equal(pkg["state_dict"]["w"], torch.ones(2))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="tiny, small-random, large"):
        resolve_model("/no/such/dir")
