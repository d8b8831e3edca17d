"""One loader for every source of Instruct-MusicGen weights.

A model is three parts, each a file or directory in the layout its publisher uses:

- base MusicGen in audiocraft's format: `state_dict.bin` (LM, with its `xp.cfg`) and
  `compression_state_dict.bin` (EnCodec), as in `facebook/musicgen-large`;
- T5: a `save_pretrained` directory (`t5-base` on the hub);
- the adapter: the released Lightning checkpoint `finetuned.ckpt`
  (`ldzhangyx/instruct-MusicGen`), key layout in `shared/reference/instruct-musicgen-facts.md`,
  optionally with a `musicedit.json` beside it naming the stems the adapter was trained on
  (`{"stems": ["Drums", "Bass", "Piano", "Guitar"]}`; without it, the release's four).

Every file is read with `models.checkpoint.read_checkpoint` (no code runs). Missing,
unexpected or mis-shaped keys raise `CheckpointError` naming the key and the file.
Random-weight presets are written in exactly this layout and come back through this loader.
"""
from __future__ import annotations

import json
import logging
import re
import typing as tp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, snapshot_download
from omegaconf import OmegaConf

from .checkpoint import CheckpointError, OpaqueObject, load_state_strict, read_checkpoint
from .instruct_musicgen import AdapterConfig, InstructMusicGen

log = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
ADAPTER_FILE = "finetuned.ckpt"
METADATA_FILE = "musicedit.json"
T5_DIR = "t5"
# The stems of the released model (Slakh2100 classes), for an adapter without METADATA_FILE.
RELEASE_STEMS = ("Drums", "Bass", "Piano", "Guitar")
# What the T5 encoder needs from a hub repo: config, tokenizer and one copy of the PyTorch
# weights, safetensors else .bin (`t5-base` also holds TensorFlow, Flax, Rust and ONNX copies).
T5_HUB_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "spiece.model")
T5_HUB_WEIGHTS = (("model.safetensors", "model.safetensors.index.json", "model-*.safetensors"),
                  ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"))

# Prefixes of the released checkpoint (see the facts file).
_CP = "model.cp_transformer."
_PEFT_LM = "model.peft_model.lm."
_PEFT_LAYERS = _PEFT_LM + "transformer.base_model.model.layers."


@dataclass(frozen=True)
class ModelFiles:
    """Where each part of a model comes from: a local path, or a hub repo id when online."""

    base: str            # directory with state_dict.bin + compression_state_dict.bin, or hub id
    t5: str              # save_pretrained directory, or hub id (t5-base)
    adapter: str | None  # finetuned.ckpt path, or "repo_id:filename"; None = untrained adapter


class UnsupportedStems(ValueError):
    """Stems were asked for that the loaded model was not trained on."""


@dataclass
class LoadedModel:
    """An Instruct-MusicGen ready for inference, with the codec that turns audio into codes."""

    lm: InstructMusicGen
    codec: tp.Any  # audiocraft CompressionModel
    device: torch.device
    dtype: torch.dtype
    files: ModelFiles
    stems: tuple[str, ...]  # what instructions may name, as the templates spell them

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.codec.frame_rate)


# ----------------------------------------------------------------- hub access
def _local_or_hub_file(source: str, filename: str) -> Path:
    """A file from a local directory, or downloaded from the hub repo `source`."""
    local = Path(source)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise CheckpointError(f"{filename} not found in {local}")
        return path
    if local.is_file():
        return local
    try:
        return Path(hf_hub_download(repo_id=source, filename=filename))
    except Exception as exc:
        raise CheckpointError(f"cannot get {filename} from {source!r}: not a local path and the "
                              f"hub download failed ({exc})") from exc


def _t5_dir(source: str) -> Path:
    """A T5 `save_pretrained` directory: `source` itself, or the files of hub repo `source`
    the encoder needs (`T5_HUB_FILES` and the safetensors weights, else the .bin ones)."""
    local = Path(source)
    if local.is_dir():
        return local
    for weights in T5_HUB_WEIGHTS:
        try:
            directory = Path(snapshot_download(repo_id=source,
                                               allow_patterns=[*T5_HUB_FILES, *weights]))
        except Exception as exc:
            raise CheckpointError(f"cannot get {source!r}: not a local directory and the hub "
                                  f"download failed ({exc})") from exc
        if any((directory / name).is_file() for name in weights if "*" not in name):
            return directory
    raise CheckpointError(f"{source!r} on the hub has no PyTorch weights (model.safetensors or "
                          "pytorch_model.bin): point the T5 at a save_pretrained directory")


def _adapter_file(spec: str) -> Path:
    if Path(spec).is_file():
        return Path(spec)
    repo, _, filename = spec.partition(":")
    return _local_or_hub_file(repo, filename or ADAPTER_FILE)


# ---------------------------------------------------------------- base model
def _experiment_cfg(pkg: dict, file: Path) -> tp.Any:
    if "xp.cfg" not in pkg or "best_state" not in pkg:
        raise CheckpointError(f"{file}: expected audiocraft keys 'xp.cfg' and 'best_state', "
                              f"found {sorted(pkg)[:5]}")
    return OmegaConf.create(pkg["xp.cfg"])


def build_lm(cfg: tp.Any, device: str | torch.device = "meta") -> tp.Any:
    """Build audiocraft's LMModel from an experiment config, without its text conditioner.

    The T5 conditioner is attached by `attach_text_conditioner`: audiocraft's own
    downloads by name in its constructor.
    """
    from audiocraft.models import builders
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(cfg, False)
    cfg.device = str(device)
    cfg.dtype = "float32"
    cfg.conditioners = {}
    return builders.get_lm_model(cfg)


def attach_text_conditioner(lm: tp.Any, t5_dir: Path, device: str | torch.device) -> None:
    from audiocraft.modules.conditioners import ConditioningProvider

    from .text_encoder import T5DirConditioner
    conditioner = T5DirConditioner(t5_dir, output_dim=lm.dim, device=str(device))
    lm.condition_provider = ConditioningProvider({"description": conditioner}, device=str(device))


_TRUSTED_CODEC_POINTERS = frozenset({"facebook/encodec_32khz", "facebook/encodec_24khz",
                                     "facebook/encodec_48khz"})


def load_codec(source: str, device: torch.device) -> tp.Any:
    """EnCodec from `compression_state_dict.bin` (full state, or a 'pretrained' pointer)."""
    from audiocraft.models import builders
    from audiocraft.models.encodec import CompressionModel
    file = _local_or_hub_file(source, CODEC_FILE)
    pkg = read_checkpoint(file)
    if "pretrained" in pkg:
        # audiocraft's export format can point at a published EnCodec instead of holding one;
        # follow only Meta's (loaded by transformers from the hub), never a name the file picks
        pointer = pkg["pretrained"]
        if not (isinstance(pointer, str) and pointer in _TRUSTED_CODEC_POINTERS):
            raise CheckpointError(
                f"{file}: points at compression model {pointer!r}; only "
                f"{', '.join(sorted(_TRUSTED_CODEC_POINTERS))} are followed. Put the full "
                "EnCodec state (best_state + xp.cfg) in the file instead.")
        return CompressionModel.get_pretrained(pointer, device=device)
    cfg = _experiment_cfg(pkg, file)
    OmegaConf.set_struct(cfg, False)
    cfg.device = "cpu"
    codec = builders.get_compression_model(cfg)
    load_state_strict(codec, dict(pkg["best_state"]), file, "the EnCodec model")
    return codec.to(device).eval()


# ------------------------------------------------------------ adapter layout
def release_key_layout(num_layers: int) -> dict[str, tuple[str, int | None]]:
    """Map each released-checkpoint key we load to (our parameter name, in_proj row block).

    The row block (0 = query, 1 = key, 2 = value) says which third of audiocraft's packed
    cross-attention `in_proj_weight` a split q/k/v projection of the release fills.
    """
    layout: dict[str, tuple[str, int | None]] = {
        _CP + "pos_emb": ("audio_fusion.pos_emb", None),
        _CP + "gates": ("audio_fusion.gates", None),
    }
    for i in range(num_layers):
        layout[f"{_CP}merge_linear.{i}.weight"] = (f"audio_fusion.merge_linear.{i}.weight", None)
        ca = f"{_PEFT_LAYERS}{i}.cross_attention."
        for proj in ("q", "v"):
            layout[f"{ca}{proj}_proj.lora_A.default.weight"] = (f"text_lora.{i}.{proj}_A", None)
            layout[f"{ca}{proj}_proj.lora_B.default.weight"] = (f"text_lora.{i}.{proj}_B", None)
        in_proj = f"lm.transformer.layers.{i}.cross_attention.in_proj_weight"
        layout[f"{ca}q_proj.base_layer.weight"] = (in_proj, 0)
        layout[f"{ca}k_proj.weight"] = (in_proj, 1)
        layout[f"{ca}v_proj.base_layer.weight"] = (in_proj, 2)
    return layout


def frozen_release_keys(model: InstructMusicGen) -> set[str]:
    """Keys the release holds that inference does not read (facts file): a frozen copy of every
    MusicGen LM weight under the peft prefix (identical to facebook/musicgen-large) and the
    split self-attention projections it never used."""
    keys = {f"{_PEFT_LAYERS}{i}.self_attn.{proj}_proj.weight"
            for i in range(model.num_layers) for proj in "qkv"}
    for name in model.lm.state_dict():
        if name.startswith("transformer.layers."):
            keys.add(_PEFT_LAYERS + name[len("transformer.layers."):])
        else:
            keys.add(_PEFT_LM + name)
    return keys


# The condition path's duplicates of each layer's shared modules, also frozen copies; the
# facts file names them only as `layers.{i}.*`.
_CONDITION_LAYER_COPIES = re.compile(r"^model\.cp_transformer\.layers\.\d+\.")


def load_adapter(model: InstructMusicGen, file: Path) -> None:
    """Load the released adapter checkpoint into `model` (fusion, LoRA, cross-attn q/k/v).

    The base cross-attention q/k/v are taken from this checkpoint when it holds them: in the
    release they are separate tensors that were never loaded from MusicGen-large, so the
    released model only works with the checkpoint's own. A checkpoint without any of them keeps
    MusicGen's (with a warning); one holding only some of them is an error.
    """
    pkg = read_checkpoint(file)
    state = pkg.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a Lightning checkpoint with a 'state_dict'")
    layout = release_key_layout(model.num_layers)
    if not any(key in state for key, (_, block) in layout.items() if block is not None):
        log.warning("adapter checkpoint has no base cross-attention q/k/v: keeping MusicGen's",
                    extra={"adapter": str(file)})
        layout = {key: target for key, target in layout.items() if target[1] is None}
    missing = [k for k in layout if k not in state]
    if missing:
        raise CheckpointError(f"{file}: adapter checkpoint is missing key {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    frozen = frozen_release_keys(model)
    unexpected = [k for k in state if k not in layout and k not in frozen
                  and not _CONDITION_LAYER_COPIES.match(k)]
    if unexpected:
        raise CheckpointError(f"{file}: adapter checkpoint has unexpected key {unexpected[0]!r}")
    params = dict(model.named_parameters())
    d = model.dim
    with torch.no_grad():
        for key, (name, block) in layout.items():
            tensor = state[key]
            target = params[name] if block is None else params[name][block * d:(block + 1) * d]
            if tuple(tensor.shape) != tuple(target.shape):
                raise CheckpointError(f"{file}: key {key!r} has shape {tuple(tensor.shape)}, "
                                      f"the model expects {tuple(target.shape)} (for {name})")
            target.copy_(tensor.to(target.dtype))


def _find_hparam(hparams: object, name: str, depth: int = 0) -> object | None:
    """`name` in the checkpoint's hyper-parameters: plain dicts, searched a few levels deep
    (classes the release names are inert placeholders whose state is a dict too)."""
    if depth > 4:
        return None
    if isinstance(hparams, OpaqueObject):
        hparams = getattr(hparams, "state", None)
    if not isinstance(hparams, dict):
        return None
    if name in hparams:
        return hparams[name]
    for value in hparams.values():
        found = _find_hparam(value, name, depth + 1)
        if found is not None:
            return found
    return None


def adapter_config_from_checkpoint(file: Path,
                                   defaults: AdapterConfig | None = None) -> AdapterConfig:
    """Read the adapter sizes (max frames, LoRA rank) from the checkpoint's tensor shapes and
    the LoRA alpha from its hyper-parameters (the release's 64 when they do not say)."""
    defaults = defaults or AdapterConfig()
    pkg = read_checkpoint(file)
    state = pkg.get("state_dict", {})
    pos = state.get(_CP + "pos_emb")
    lora = state.get(f"{_PEFT_LAYERS}0.cross_attention.q_proj.lora_A.default.weight")
    if pos is None or lora is None:
        raise CheckpointError(f"{file}: adapter checkpoint is missing key "
                              f"{_CP + 'pos_emb' if pos is None else 'lora_A of layer 0'!r}")
    rank = int(lora.shape[0])
    alpha = _find_hparam(pkg.get("hyper_parameters"), "lora_alpha")
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0:
        alpha = float(alpha)
    else:
        alpha = defaults.lora_alpha
        if rank != defaults.lora_rank:  # the scale alpha/rank is then a guess
            log.warning("adapter checkpoint has LoRA rank %d but no lora_alpha hyper-parameter: "
                        "assuming alpha %g (scale %.3g)", rank, alpha, alpha / rank)
    return AdapterConfig(max_frames=pos.shape[1] - 1, lora_rank=rank, lora_alpha=alpha)


def save_release_checkpoint(model: InstructMusicGen, path: Path,
                            include_frozen_copies: bool = True, global_step: int = 5000,
                            hyper_parameters: dict | None = None) -> None:
    """Write `model`'s adapter in the released Lightning layout (for tests and presets).

    With `include_frozen_copies` the file also holds what the release holds besides: the
    frozen LM weights under the peft prefix, the duplicated condition-path layers and the unused
    split self-attention projections, so loading exercises the same skipping.
    `global_step` and `hyper_parameters` (merged over the release's `lr`) record how the
    adapter was trained; the LoRA rank and alpha always come from the model.
    """
    params = dict(model.named_parameters())
    d = model.dim
    state: dict[str, torch.Tensor] = {}
    for key, (name, block) in release_key_layout(model.num_layers).items():
        tensor = params[name] if block is None else params[name][block * d:(block + 1) * d]
        state[key] = tensor.detach().float().cpu().clone()
    if include_frozen_copies:
        for name, tensor in model.lm.named_parameters():
            if name.startswith("transformer.layers."):
                rest = name[len("transformer.layers."):]
                state[_PEFT_LAYERS + rest] = tensor.detach().clone()
                layer_idx, sub = rest.split(".", 1)
                if sub.startswith(("self_attn.", "norm1", "norm2", "linear1", "linear2")):
                    state[f"{_CP}layers.{layer_idx}.{sub}"] = tensor.detach().clone()
            else:
                state[_PEFT_LM + name] = tensor.detach().clone()
        for i in range(model.num_layers):
            for proj in ("q", "k", "v"):
                state[f"{_PEFT_LAYERS}{i}.self_attn.{proj}_proj.weight"] = torch.zeros(d, d)
    torch.save({"state_dict": state, "epoch": 0, "global_step": global_step,
                "pytorch-lightning_version": "2.2.0",
                "hyper_parameters": {"lr": 1e-4, **(hyper_parameters or {}),
                                     "lora_rank": model.adapter_config.lora_rank,
                                     "lora_alpha": model.adapter_config.lora_alpha}},
               path)


# ----------------------------------------------------------------- metadata
def model_stems(files: ModelFiles) -> tuple[str, ...]:
    """The stems the model was trained on: from `METADATA_FILE` beside a local adapter
    checkpoint, else the release's (`RELEASE_STEMS`). Reads no weights.

    Raises:
        CheckpointError: the metadata file is not `{"stems": [names...]}`.
    """
    if files.adapter is None or not Path(files.adapter).is_file():
        return RELEASE_STEMS
    file = Path(files.adapter).with_name(METADATA_FILE)
    if not file.is_file():
        return RELEASE_STEMS
    try:
        metadata = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: cannot read the model metadata ({exc}); write it as "
                              '{"stems": ["Drums", "Bass", ...]}') from exc
    stems = metadata.get("stems") if isinstance(metadata, dict) else None
    if (not isinstance(stems, list) or not stems or len(set(stems)) != len(stems)
            or not all(isinstance(s, str) and s.strip() == s and s for s in stems)):
        raise CheckpointError(f"{file}: 'stems' must be a list of distinct, non-empty stem names "
                              '(as the templates spell them), e.g. {"stems": ["Drums", "Bass"]}')
    extra = sorted(set(metadata) - {"stems"})
    if extra:
        raise CheckpointError(f"{file}: unexpected key {extra[0]!r}; the metadata holds only "
                              "'stems'")
    return tuple(stems)


def write_metadata(directory: Path, stems: Sequence[str]) -> None:
    """Write `METADATA_FILE` (the adapter's stems) into `directory`."""
    (directory / METADATA_FILE).write_text(json.dumps({"stems": list(stems)}, indent=2) + "\n")


# ------------------------------------------------------------------ entry
def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the release's precision), float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_model(files: ModelFiles, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, merge_lora: bool = True) -> LoadedModel:
    """Load base MusicGen + T5 + adapter through one path, whatever their source.

    Args:
        files: where the parts are (see `models.presets.resolve_model`).
        device: `cpu` or `cuda[:n]`.
        dtype: LM precision; default fp16 on CUDA, float32 on CPU. EnCodec stays float32.
        merge_lora: fold LoRA into the cross-attention weights (serving); keep False to
            compare merged and unmerged models.
    Raises:
        CheckpointError: a part cannot be read or does not match the model (the message names
            the key and the file), or the metadata beside the adapter is malformed.
    """
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    stems = model_stems(files)
    lm_file = _local_or_hub_file(files.base, LM_FILE)
    pkg = read_checkpoint(lm_file)
    cfg = _experiment_cfg(pkg, lm_file)
    lm = build_lm(cfg, device="meta")
    attach_text_conditioner(lm, _t5_dir(files.t5), device)
    load_state_strict(lm, dict(pkg["best_state"]), lm_file, "the MusicGen LM")
    del pkg
    adapter_cfg = AdapterConfig()
    adapter_file = None
    if files.adapter is not None:
        adapter_file = _adapter_file(files.adapter)
        adapter_cfg = adapter_config_from_checkpoint(adapter_file)
    if adapter_file is not None:
        # The checkpoint sets every adapter parameter (a missing one is an error), so they
        # are allocated uninitialised, straight on the target device: no ~1 GB of random
        # float32 init in host RAM for large.
        model = InstructMusicGen(lm, adapter_cfg, adapter_device="meta")
        model.audio_fusion.to_empty(device=device)
        model.text_lora.to_empty(device=device)
        load_adapter(model, adapter_file)
    else:
        model = InstructMusicGen(lm, adapter_cfg)
    model = model.to(device=device).eval()
    if merge_lora:
        model.merge_lora()  # in float32, before the cast: an fp16 merge would round twice
    model = model.to(dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    codec = load_codec(files.base, device)
    log.info("model loaded", extra={"base": files.base, "adapter": files.adapter,
                                    "device": str(device), "dtype": str(dtype),
                                    "stems": ",".join(stems)})
    return LoadedModel(model, codec, device, dtype, files, stems)
