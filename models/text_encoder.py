"""T5 text conditioner loaded from a directory.

audiocraft's `T5Conditioner` only accepts hub names (`t5-base` ...) and downloads them
in its constructor. We need the same conditioner (same tokenisation, masking, output
projection and state-dict keys) but loaded from a local directory, which is where the weights
are on an offline GPU host and where the `tiny` preset writes its random T5.

The encoder's weights are checked like every other checkpoint (`models.loader`): a missing,
unexpected or mis-shaped key raises `CheckpointError` naming the key and the file,
instead of transformers' default of initialising what is missing at random.
"""
from __future__ import annotations

import re
import typing as tp
from pathlib import Path

import torch
from audiocraft.modules.conditioners import T5Conditioner, TextConditioner
from audiocraft.utils.autocast import TorchAutocast
from transformers import T5EncoderModel, T5Tokenizer

from .checkpoint import CheckpointError

# Weight files a save_pretrained directory may hold, in the order transformers reads them.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# A save of the whole encoder-decoder T5 (`t5-base` on the hub) also holds the decoder, which
# transformers already leaves out of the report, and may hold an LM head: both unused here.
_UNUSED_T5_KEYS = re.compile(r"^(decoder\.|lm_head\.)")


def _weights_file(t5_dir: Path) -> Path:
    """The weight file transformers reads in `t5_dir` (the directory when there is none)."""
    return next((t5_dir / name for name in _WEIGHT_FILES if (t5_dir / name).is_file()), t5_dir)


def load_t5_encoder(t5_dir: str | Path) -> T5EncoderModel:
    """Read a T5 encoder from a `save_pretrained` directory, refusing any key mismatch.

    Raises:
        CheckpointError: a weight is missing, unexpected or has the wrong shape (the message
            names the key and the file), or transformers cannot read the directory.
    """
    t5_dir = Path(t5_dir)
    file = _weights_file(t5_dir)
    try:
        # ignore_mismatched_sizes: report a wrong shape in the loading info, raised below.
        loaded = T5EncoderModel.from_pretrained(str(t5_dir), output_loading_info=True,
                                                ignore_mismatched_sizes=True)
        t5, info = tp.cast(tuple[T5EncoderModel, dict[str, list]], loaded)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the T5 encoder in {t5_dir}: {exc}. Point the model "
                              "at a T5 save_pretrained directory (config.json and weights)"
                              ) from exc
    missing = sorted(info["missing_keys"])
    unexpected = sorted(k for k in info["unexpected_keys"] if not _UNUSED_T5_KEYS.match(k))
    mismatched = sorted(info["mismatched_keys"])
    for problem, keys in (("is missing key", missing), ("has unexpected key", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"{file}: the T5 encoder {problem} {keys[0]!r}{more}")
    if mismatched:
        key, stored, expected = mismatched[0]
        raise CheckpointError(f"{file}: the T5 encoder key {key!r} has shape {tuple(stored)}, "
                              f"the model expects {tuple(expected)}")
    if info["error_msgs"]:
        raise CheckpointError(f"{file}: cannot load the T5 encoder: {info['error_msgs'][0]}")
    return t5.eval()


class T5DirConditioner(T5Conditioner):
    """audiocraft's T5 conditioner, reading tokenizer and encoder from `t5_dir`.

    Args:
        t5_dir: a directory as written by `save_pretrained` (config, weights, tokenizer).
        output_dim: width of the language model (the output projection's size).
        device: device of the T5 encoder.
        autocast_dtype: dtype for T5 under autocast on CUDA (audiocraft's default float32).
    """

    def __init__(self, t5_dir: str | Path, output_dim: int, device: str,
                 autocast_dtype: str | None = "float32"):
        t5_dir = str(t5_dir)
        tokenizer = T5Tokenizer.from_pretrained(t5_dir)
        t5 = load_t5_encoder(t5_dir)
        # Skip T5Conditioner.__init__ (it downloads by name); set the same attributes it sets.
        TextConditioner.__init__(self, t5.config.d_model, output_dim)
        self.device = device
        self.name = t5_dir
        self.finetune = False
        self.word_dropout = 0.0
        self.normalize_text = False
        if autocast_dtype is None or device == "cpu":
            self.autocast = TorchAutocast(enabled=False)
        else:
            self.autocast = TorchAutocast(enabled=True, device_type=torch.device(device).type,
                                          dtype=getattr(torch, autocast_dtype))
        self.t5_tokenizer = tokenizer
        # Not a submodule: T5 weights stay out of the LM's state dict, as in audiocraft.
        self.__dict__["t5"] = torch.nn.Module.to(t5, torch.device(device))
