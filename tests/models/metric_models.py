"""Tiny random-weight metric models, built from config by transformers' own classes and
written with `save_pretrained`, as the real CLAP and AudioSet-classifier directories are."""
from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_clap(directory: Path) -> Path:
    """A 1-layer CLAP (HTSAT audio tower, RoBERTa text tower, BPE tokenizer trained here)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizer,
    )
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Drums Bass Piano Guitar Strings music"] * 8, vocab_size=300,
                            min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    audio = ClapAudioConfig(patch_embeds_hidden_size=8, hidden_size=64, depths=[1, 1, 1, 1],
                            num_attention_heads=[1, 1, 2, 2], projection_dim=16)
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                                 projection_dim=16))
    model.save_pretrained(directory)
    # Unfused CLAP checkpoints (as laion/larger_clap_music) cut long clips at random and pad
    # short ones.
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"),
                  tokenizer=tokenizer).save_pretrained(directory)
    return directory


def write_tiny_audio_tagger(directory: Path) -> Path:
    """A 1-layer Audio Spectrogram Transformer classifier with 10 classes."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
    torch.manual_seed(0)
    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_length=256, num_labels=10)
    ASTForAudioClassification(config).save_pretrained(directory)
    ASTFeatureExtractor(max_length=256).save_pretrained(directory)
    return directory
