"""Model presets: where `--model tiny|small-random|large|DIR` gets its weights.

- `tiny`: random weights from config (2-layer LM, tiny EnCodec, 1-layer T5 with a
  sentencepiece tokenizer trained on the fly), written once to the cache directory in the real
  layout and read back through `models.loader.load_model`. Seconds on a CPU.
- `small-random`: MusicGen-small dimensions (and the real EnCodec's), random weights; for
  benchmarks.
- `large`: the real weights: `facebook/musicgen-large` + `t5-base` +
  `ldzhangyx/instruct-MusicGen:finetuned.ckpt` from the hub (or their local copies).
- a directory: `state_dict.bin`, `compression_state_dict.bin`, `finetuned.ckpt` and
  optionally `t5/` (else `t5-base` from the hub) and `musicedit.json` (the adapter's
  stems; else the release's Drums, Bass, Piano, Guitar).

The random presets write `musicedit.json` with the release's four stems.
"""
from __future__ import annotations

import tempfile
import typing as tp
from pathlib import Path

import torch

from . import configs
from .cache_files import write_once
from .instruct_musicgen import AdapterConfig, CrossAttentionLoRA, InstructMusicGen
from .loader import (
    ADAPTER_FILE,
    CODEC_FILE,
    LM_FILE,
    RELEASE_STEMS,
    T5_DIR,
    LoadedModel,
    ModelFiles,
    attach_text_conditioner,
    build_lm,
    save_release_checkpoint,
    write_metadata,
)

RANDOM_PRESETS = {
    "tiny": (configs.TINY_LM, configs.TINY_CODEC),
    "small-random": (configs.MUSICGEN_SMALL, configs.ENCODEC_32KHZ),
}
LARGE = ModelFiles(base="facebook/musicgen-large", t5="t5-base",
                   adapter="ldzhangyx/instruct-MusicGen:finetuned.ckpt")
PRESET_NAMES = (*RANDOM_PRESETS, "large")

# Words the tiny tokenizer is trained on: instructions and a little music vocabulary.
_CORPUS = [
    "Music piece. Instruct: Add Drums.", "Music piece. Instruct: No Bass.",
    "Music piece. Instruct: Only Guitar.", "Music piece. Instruct: Add Piano.",
    "Music piece. Instruct: Only Drums.", "Music piece. Instruct: No Guitar.",
    "add remove extract only keep just the drums bass piano guitar vocals strings",
    "a calm piano melody with soft drums and a warm bass line",
    "rock song with electric guitar solo and loud drums",
]


def resolve_model(name: str, cache_dir: str | Path) -> ModelFiles:
    """Turn a preset name or a directory into the files the loader reads (writing random
    presets under `cache_dir` on first use: the worker passes
    `Settings.effective_model_cache_dir`)."""
    if name in RANDOM_PRESETS:
        return ensure_random_preset(name, Path(cache_dir))
    if name == "large":
        return LARGE
    path = Path(name)
    if not path.is_dir():
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(PRESET_NAMES)} "
                         "or a directory with state_dict.bin, compression_state_dict.bin "
                         "and finetuned.ckpt")
    t5 = path / T5_DIR
    return ModelFiles(base=str(path), t5=str(t5) if t5.is_dir() else "t5-base",
                      adapter=str(path / ADAPTER_FILE))


def ensure_random_preset(name: str, cache_dir: Path, seed: int = 0) -> ModelFiles:
    """Write a random-weight preset to `cache_dir/name` once (atomically) and return its files."""
    target = write_once(cache_dir / name, lambda tmp: write_random_model(
        tmp, *RANDOM_PRESETS[name], seed=seed, include_frozen_copies=name == "tiny"))
    return ModelFiles(base=str(target), t5=str(target / T5_DIR), adapter=str(target / ADAPTER_FILE))


def write_tiny_t5(directory: Path, d_model: int = 32) -> None:
    """A 1-layer T5 encoder and a sentencepiece tokenizer trained on a small corpus."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(_CORPUS * 4))
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "spiece"), vocab_size=64,
            hard_vocab_limit=False,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            character_coverage=1.0, minloglevel=2)
        tokenizer = T5Tokenizer(vocab_file=str(Path(tmp) / "spiece.model"), extra_ids=0,
                                legacy=True)
        tokenizer.save_pretrained(str(directory))
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=1,
                      num_heads=4, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).save_pretrained(str(directory))


def write_random_model(directory: Path, lm_size: configs.LMSize, codec_size: configs.CodecSize,
                       seed: int = 0, include_frozen_copies: bool = True,
                       stems: tuple[str, ...] = RELEASE_STEMS) -> InstructMusicGen:
    """Write a random-weight Instruct-MusicGen in the real file layout, with `stems` in its
    metadata; returns the model as written (float32, LoRA unmerged), so tests can compare it
    with what the loader reads."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    write_tiny_t5(directory / T5_DIR)
    lm_cfg = configs.lm_xp_cfg(lm_size)
    lm = build_lm(OmegaConf.create(lm_cfg), device="cpu")
    attach_text_conditioner(lm, directory / T5_DIR, "cpu")
    torch.save({"xp.cfg": lm_cfg, "best_state": lm.state_dict(), "version": "musicedit-random"},
               directory / LM_FILE)
    codec_cfg = configs.codec_xp_cfg(codec_size)
    codec = builders.get_compression_model(OmegaConf.create(codec_cfg))
    torch.save({"xp.cfg": codec_cfg, "best_state": codec.state_dict()}, directory / CODEC_FILE)
    model = InstructMusicGen(lm, AdapterConfig())
    with torch.no_grad():
        # A random adapter that does something: non-zero gates and LoRA B.
        model.audio_fusion.gates.normal_(0.0, 0.5)
        for lora in model.text_lora:
            lora = tp.cast(CrossAttentionLoRA, lora)
            lora.q_B.normal_(0.0, 0.02)
            lora.v_B.normal_(0.0, 0.02)
    save_release_checkpoint(model, directory / ADAPTER_FILE,
                            include_frozen_copies=include_frozen_copies)
    write_metadata(directory, stems)
    return model.eval()


@torch.no_grad()
def build_random_model(lm_size: configs.LMSize, codec_size: configs.CodecSize,
                       device: str | torch.device, dtype: torch.dtype, t5_dir: Path,
                       seed: int = 0) -> LoadedModel:
    """A random-weight model built in memory, straight on `device` (for the GPU check: the
    MusicGen-large LM in fp16 is allocated once on the GPU, never in host memory, and
    nothing is downloaded). The LoRA is merged as for serving. `t5_dir` receives a tiny T5
    with a tokenizer trained on the fly (the text encoder is not what is being measured).
    """
    from audiocraft.models import builders
    from omegaconf import OmegaConf
    torch.manual_seed(seed)
    device = torch.device(device)
    write_tiny_t5(t5_dir)
    lm = build_lm(OmegaConf.create(configs.lm_xp_cfg(lm_size)), device="meta")
    lm = lm.to_empty(device=device)
    for name, parameter in lm.named_parameters():
        if parameter.dim() >= 2:
            parameter.normal_(0.0, 0.02)
        elif "norm" in name and name.endswith("weight"):
            parameter.fill_(1.0)
        else:
            parameter.zero_()
    attach_text_conditioner(lm, t5_dir, device)
    model = InstructMusicGen(lm, AdapterConfig(), adapter_device=device)
    model.audio_fusion.gates.normal_(0.0, 0.5)
    for lora in model.text_lora:
        lora = tp.cast(CrossAttentionLoRA, lora)
        lora.q_B.normal_(0.0, 0.02)
        lora.v_B.normal_(0.0, 0.02)
    model.merge_lora()  # in float32, before the cast (as the loader does)
    model = model.to(device=device, dtype=dtype).eval()  # with the text projection
    for p in model.parameters():
        p.requires_grad_(False)
    codec = builders.get_compression_model(OmegaConf.create(configs.codec_xp_cfg(codec_size)))
    files = ModelFiles(base=f"random:{lm_size}", t5=str(t5_dir), adapter=None)
    return LoadedModel(model, codec.to(device).eval(), device, dtype, files, RELEASE_STEMS)
