"""Tiny random-weight models written in the real layout and read back by the real loader."""
from __future__ import annotations

import pytest
import torch

from models.loader import load_model
from models.presets import ensure_random_preset


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_files(model_cache):
    return ensure_random_preset("tiny", model_cache)


@pytest.fixture(scope="session")
def tiny(tiny_files):
    """Loaded as for serving (LoRA merged), float32 on the CPU."""
    torch.manual_seed(0)
    return load_model(tiny_files, device="cpu")


@pytest.fixture(scope="session")
def tiny_unmerged(tiny_files):
    return load_model(tiny_files, device="cpu", merge_lora=False)


@pytest.fixture(scope="session")
def tiny_separator_dir(model_cache):
    """The `tiny` Demucs separator, written once in the released file layout."""
    from models.separation import resolve_separator
    return resolve_separator("tiny", model_cache)


@pytest.fixture(scope="session")
def tiny_separator(tiny_separator_dir):
    from models.separation import load_separator
    return load_separator(tiny_separator_dir)
