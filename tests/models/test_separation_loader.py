"""The Demucs loader: the released layout loads, mistakes are named, no code runs."""
from __future__ import annotations

import hashlib
import re
import shutil

import pytest
import torch
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import serialize_model
from omegaconf import OmegaConf

from models.checkpoint import CheckpointError
from models.separation import load_separator, resolve_separator
from models.separation.loader import separator_file
from models.separation.presets import (
    HTDEMUCS_6S_FILE,
    HTDEMUCS_6S_KWARGS,
    TINY_KWARGS,
    ensure_random_separator,
)


@pytest.fixture(scope="module")
def package(tiny_separator_dir):
    """The tiny separator's package as demucs wrote it (class, arguments, float16 state)."""
    return torch.load(separator_file(tiny_separator_dir), weights_only=False)


def _write(pkg, path):
    torch.save(pkg, path)
    return path


def test_tiny_preset_is_demucs_layout_and_loads_through_the_real_loader(tiny_separator_dir):
    """`<signature>-<sha256[:8]>.th` holding demucs's serialize_model package; the loader
    rebuilds HTDemucs with the file's arguments and its float16 state, in float32."""
    file = separator_file(tiny_separator_dir)
    assert file.name.startswith("tiny-")
    assert hashlib.sha256(file.read_bytes()).hexdigest().startswith(file.stem.split("-")[1])
    separator = load_separator(tiny_separator_dir)
    assert type(separator.model) is HTDemucs
    assert separator.stems == ("Drums", "Bass", "Other", "Vocals", "Guitar", "Piano")
    assert (separator.sample_rate, separator.channels, separator.segment_seconds) == (44100, 2, 1.0)
    pkg = torch.load(file, weights_only=False)
    for key, value in separator.model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, pkg["state"][key].float()), key
    assert not any(p.requires_grad for p in separator.model.parameters())


def test_the_preset_is_written_once(tmp_path):
    first = ensure_random_separator("tiny", tmp_path)
    stamp = separator_file(first).stat().st_mtime_ns
    assert ensure_random_separator("tiny", tmp_path) == first
    assert separator_file(first).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("mutation, message", [
    (lambda s: s.pop("decoder.0.conv_tr.weight"), "is missing key 'decoder.0.conv_tr.weight'"),
    (lambda s: s.__setitem__("encoder.9.bias", torch.zeros(3)),
     "has unexpected key 'encoder.9.bias'"),
    (lambda s: s.__setitem__("freq_emb.embedding.weight", torch.zeros(3, 3)),
     "key 'freq_emb.embedding.weight' has shape (3, 3)"),
])
def test_state_key_errors_name_key_and_file(package, tmp_path, mutation, message):
    pkg = dict(package, state=dict(package["state"]))
    mutation(pkg["state"])
    path = _write(pkg, tmp_path / "broken.th")
    with pytest.raises(CheckpointError, match=rf"{path}.*{re.escape(message)}"):
        load_separator(path)


def test_a_class_outside_the_allow_list_is_not_rebuilt(tmp_path):
    model = HDemucs(sources=["drums", "bass"], channels=4, depth=2)
    path = _write(serialize_model(model, OmegaConf.create({})), tmp_path / "hdemucs.th")
    with pytest.raises(CheckpointError, match=r"names model class demucs\.hdemucs\.HDemucs; "
                                              r"only demucs\.htdemucs\.HTDemucs"):
        load_separator(path)


class _Payload:
    """Unpickling this with plain pickle would run `call(*args)`, which creates the marker."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


@pytest.mark.parametrize("where", ["klass", "kwargs", "state", "training_args"])
def test_a_file_naming_code_runs_none_of_it(package, tmp_path, where):
    """A package whose class, argument, state or metadata is a call to os.system: nothing runs
    (the call becomes an inert object), and the loader refuses it or ignores the metadata."""
    import os
    marker = tmp_path / "pwned"
    payload = _Payload(os.system, (f"touch {marker}",))
    pkg = dict(package, state=dict(package["state"]), kwargs=dict(package["kwargs"]),
               training_args={})
    if where == "klass":
        pkg["klass"] = payload
    else:
        pkg[where]["hostile"] = payload
    path = _write(pkg, tmp_path / "hostile.th")
    if where == "training_args":
        load_separator(path)
    else:
        with pytest.raises(CheckpointError, match=str(path)):
            load_separator(path)
    assert not marker.exists()


def test_a_file_whose_digest_does_not_match_its_name_is_refused(tiny_separator_dir, tmp_path):
    path = tmp_path / "tiny-deadbeef.th"
    shutil.copy(separator_file(tiny_separator_dir), path)
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match the checksum deadbeef"):
        load_separator(path)


def test_a_directory_must_hold_one_model_file(tiny_separator_dir, tmp_path):
    shutil.copy(separator_file(tiny_separator_dir), tmp_path / "a.th")
    shutil.copy(separator_file(tiny_separator_dir), tmp_path / "b.th")
    with pytest.raises(CheckpointError, match="holds 2 .th files"):
        load_separator(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_separator(tmp_path / "missing")


def test_unknown_separator_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="tiny, htdemucs_6s-random, htdemucs_6s"):
        resolve_separator("htdemucs_7s", tmp_path)


def test_htdemucs_6s_is_read_from_the_cache_without_a_download(tmp_path, monkeypatch):
    cached = tmp_path / "separation" / "htdemucs_6s" / HTDEMUCS_6S_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    assert resolve_separator("htdemucs_6s", tmp_path) == cached


def test_htdemucs_6s_download_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(CheckpointError, match="put 5c90dfd2-34c22ccb.th in a directory"):
        resolve_separator("htdemucs_6s", tmp_path)


def _no_download(url, dst, **kwargs):
    assert url.endswith("/demucs/hybrid_transformer/5c90dfd2-34c22ccb.th")
    assert kwargs["hash_prefix"] == "34c22ccb"
    raise OSError("offline")


@pytest.mark.parametrize("kwargs", [TINY_KWARGS, HTDEMUCS_6S_KWARGS], ids=["tiny", "htdemucs_6s"])
def test_preset_dimensions_build(kwargs):
    model = HTDemucs(**kwargs)
    assert model.sources == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    assert model.valid_length(1) == int(kwargs["segment"] * 44100)
