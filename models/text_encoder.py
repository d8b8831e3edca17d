"""T5 text conditioner loaded from a directory.

audiocraft's :class:`T5Conditioner` only accepts hub names (``t5-base`` ...) and downloads them
in its constructor. We need the same conditioner (same tokenisation, masking, output
projection and state-dict keys) but loaded from a local directory, which is where the weights
are on an offline GPU host and where the ``tiny`` preset writes its random T5.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from audiocraft.modules.conditioners import T5Conditioner, TextConditioner
from audiocraft.utils.autocast import TorchAutocast
from transformers import T5EncoderModel, T5Tokenizer


class T5DirConditioner(T5Conditioner):
    """audiocraft's T5 conditioner, reading tokenizer and encoder from ``t5_dir``.

    Args:
        t5_dir: a directory as written by ``save_pretrained`` (config, weights, spiece.model).
        output_dim: width of the language model (the output projection's size).
        device: device of the T5 encoder.
        autocast_dtype: dtype for T5 under autocast on CUDA (audiocraft's default float32).
    """

    def __init__(self, t5_dir: str | Path, output_dim: int, device: str,
                 autocast_dtype: str | None = "float32"):
        t5_dir = str(t5_dir)
        previous_level = logging.root.manager.disable
        logging.disable(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tokenizer = T5Tokenizer.from_pretrained(t5_dir)
                t5 = T5EncoderModel.from_pretrained(t5_dir).eval()
        finally:
            logging.disable(previous_level)
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
            import torch
            self.autocast = TorchAutocast(enabled=True, device_type=torch.device(device).type,
                                          dtype=getattr(torch, autocast_dtype))
        self.t5_tokenizer = tokenizer
        # Not a submodule: T5 weights stay out of the LM's state dict, as in audiocraft.
        self.__dict__["t5"] = t5.to(device)
