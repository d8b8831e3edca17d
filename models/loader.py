"""One loader for every source of Instruct-MusicGen weights.

A model is three parts, each a file or directory in the layout its publisher uses:

- base MusicGen in audiocraft's format: ``state_dict.bin`` (LM, with its ``xp.cfg``) and
  ``compression_state_dict.bin`` (EnCodec), as in ``facebook/musicgen-large``;
- T5: a ``save_pretrained`` directory (``t5-base`` on the hub);
- the adapter: the released Lightning checkpoint ``finetuned.ckpt``
  (``ldzhangyx/instruct-MusicGen``), key layout in ``shared/reference/instruct-musicgen-facts.md``.

Every file is read with :func:`models.checkpoint.read_checkpoint` (no code runs). Missing,
unexpected or mis-shaped keys raise :class:`CheckpointError` naming the key and the file.
Random-weight presets are written in exactly this layout and come back through this loader.
"""
from __future__ import annotations

import logging
import re
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .checkpoint import CheckpointError, read_checkpoint
from .instruct_musicgen import AdapterConfig, InstructMusicGen

log = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
ADAPTER_FILE = "finetuned.ckpt"
T5_DIR = "t5"

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


@dataclass
class LoadedModel:
    """An Instruct-MusicGen ready for inference, with the codec that turns audio into codes."""

    lm: InstructMusicGen
    codec: tp.Any  # audiocraft CompressionModel
    device: torch.device
    dtype: torch.dtype
    files: ModelFiles

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.codec.frame_rate)


# ----------------------------------------------------------------- hub access
def _local_or_hub_file(source: str, filename: str) -> Path:
    """A file from a local directory, or downloaded from the hub repo ``source``."""
    local = Path(source)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise CheckpointError(f"{filename} not found in {local}")
        return path
    if local.is_file():
        return local
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo_id=source, filename=filename))
    except Exception as exc:
        raise CheckpointError(f"cannot get {filename} from {source!r}: not a local path and the "
                              f"hub download failed ({exc})") from exc


def _local_or_hub_dir(source: str) -> Path:
    local = Path(source)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id=source))
    except Exception as exc:
        raise CheckpointError(f"cannot get {source!r}: not a local directory and the hub "
                              f"download failed ({exc})") from exc


def _adapter_file(spec: str) -> Path:
    if Path(spec).is_file():
        return Path(spec)
    repo, _, filename = spec.partition(":")
    return _local_or_hub_file(repo, filename or ADAPTER_FILE)


# ---------------------------------------------------------------- base model
def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], file: Path,
                what: str) -> None:
    """Strict, shape-checked load that names the key and the file on any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{file}: {what} is missing key {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise CheckpointError(f"{file}: {what} has unexpected key {unexpected[0]!r}"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{file}: {what} key {key!r} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")
    module.load_state_dict(state, strict=True, assign=True)


def _experiment_cfg(pkg: dict, file: Path) -> tp.Any:
    if "xp.cfg" not in pkg or "best_state" not in pkg:
        raise CheckpointError(f"{file}: expected audiocraft keys 'xp.cfg' and 'best_state', "
                              f"found {sorted(pkg)[:5]}")
    return OmegaConf.create(pkg["xp.cfg"])


def build_lm(cfg: tp.Any, device: str | torch.device = "meta") -> tp.Any:
    """Build audiocraft's LMModel from an experiment config, without its text conditioner.

    The T5 conditioner is attached by :func:`attach_text_conditioner`: audiocraft's own
    downloads by name in its constructor.
    """
    from audiocraft.models import builders
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(cfg, False)
    cfg.device = str(device)
    cfg.dtype = "float32"
    cfg.conditioners = {}
    for key in ("merge_text_conditions_p", "drop_desc_p"):
        if "args" in cfg.get("conditioners", {}) and key in cfg.conditioners.args:
            del cfg.conditioners.args[key]
    return builders.get_lm_model(cfg)


def attach_text_conditioner(lm: tp.Any, t5_dir: Path, device: str | torch.device) -> None:
    from audiocraft.modules.conditioners import ConditioningProvider
    from .text_encoder import T5DirConditioner
    conditioner = T5DirConditioner(t5_dir, output_dim=lm.dim, device=str(device))
    lm.condition_provider = ConditioningProvider({"description": conditioner}, device=str(device))


def load_codec(source: str, device: torch.device) -> tp.Any:
    """EnCodec from ``compression_state_dict.bin`` (full state, or a 'pretrained' pointer)."""
    from audiocraft.models import builders
    from audiocraft.models.encodec import CompressionModel
    file = _local_or_hub_file(source, CODEC_FILE)
    pkg = read_checkpoint(file)
    if "pretrained" in pkg:
        return CompressionModel.get_pretrained(pkg["pretrained"], device=device)
    cfg = _experiment_cfg(pkg, file)
    OmegaConf.set_struct(cfg, False)
    cfg.device = "cpu"
    codec = builders.get_compression_model(cfg)
    _load_state(codec, dict(pkg["best_state"]), file, "the EnCodec model")
    return codec.to(device).eval()


# ------------------------------------------------------------ adapter layout
def release_key_layout(num_layers: int) -> dict[str, tuple[str, int | None]]:
    """Map each released-checkpoint key we load to (our parameter name, in_proj row block).

    The row block (0 = query, 1 = key, 2 = value) says which third of audiocraft's packed
    cross-attention ``in_proj_weight`` a split q/k/v projection of the release fills.
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


# Keys the release holds that inference does not need: frozen copies of MusicGen's weights
# (identical to facebook/musicgen-large) and split self-attention projections it never used.
_IGNORED_RELEASE_KEYS = re.compile(
    r"^(model\.peft_model\.lm\.|model\.cp_transformer\.layers\.\d+\.)")


def load_adapter(model: InstructMusicGen, file: Path) -> None:
    """Load the released adapter checkpoint into ``model`` (fusion, LoRA, cross-attn q/k/v).

    The base cross-attention q/k/v are taken from this checkpoint: in the release they are
    separate tensors that were never loaded from MusicGen-large, so the model only works with
    the checkpoint's own.
    """
    pkg = read_checkpoint(file)
    state = pkg.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a Lightning checkpoint with a 'state_dict'")
    layout = release_key_layout(model.num_layers)
    missing = [k for k in layout if k not in state]
    if missing:
        raise CheckpointError(f"{file}: adapter checkpoint is missing key {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in layout and not _IGNORED_RELEASE_KEYS.match(k)]
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


def adapter_config_from_checkpoint(file: Path, defaults: AdapterConfig = AdapterConfig()) -> AdapterConfig:
    """Read the adapter sizes (max frames, LoRA rank) from the checkpoint's tensor shapes."""
    state = read_checkpoint(file).get("state_dict", {})
    pos = state.get(_CP + "pos_emb")
    lora = state.get(f"{_PEFT_LAYERS}0.cross_attention.q_proj.lora_A.default.weight")
    if pos is None or lora is None:
        raise CheckpointError(f"{file}: adapter checkpoint is missing key "
                              f"{_CP + 'pos_emb' if pos is None else 'lora_A of layer 0'!r}")
    return AdapterConfig(max_frames=pos.shape[1] - 1, lora_rank=lora.shape[0],
                         lora_alpha=defaults.lora_alpha)


def save_release_checkpoint(model: InstructMusicGen, path: Path,
                            include_frozen_copies: bool = True) -> None:
    """Write ``model``'s adapter in the released Lightning layout (for tests and presets).

    With ``include_frozen_copies`` the file also holds what the release holds besides: the
    frozen LM weights under the peft prefix, the duplicated condition-path layers and the unused
    split self-attention projections, so loading exercises the same skipping.
    """
    params = dict(model.named_parameters())
    d = model.dim
    state: dict[str, torch.Tensor] = {}
    for key, (name, block) in release_key_layout(model.num_layers).items():
        tensor = params[name] if block is None else params[name][block * d:(block + 1) * d]
        state[key] = tensor.detach().float().clone()
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
    torch.save({"state_dict": state, "epoch": 0, "global_step": 5000,
                "pytorch-lightning_version": "2.2.0",
                "hyper_parameters": {"lr": 1e-4, "lora_rank": model.adapter_config.lora_rank}},
               path)


# ------------------------------------------------------------------ entry
def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the release's precision), float32 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_model(files: ModelFiles, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, merge_lora: bool = True) -> LoadedModel:
    """Load base MusicGen + T5 + adapter through one path, whatever their source.

    Args:
        files: where the parts are (see :func:`models.presets.resolve_model`).
        device: ``cpu`` or ``cuda[:n]``.
        dtype: LM precision; default fp16 on CUDA, float32 on CPU. EnCodec stays float32.
        merge_lora: fold LoRA into the cross-attention weights (serving); keep False to
            compare merged and unmerged models.
    """
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    lm_file = _local_or_hub_file(files.base, LM_FILE)
    pkg = read_checkpoint(lm_file)
    cfg = _experiment_cfg(pkg, lm_file)
    lm = build_lm(cfg, device="meta")
    attach_text_conditioner(lm, _local_or_hub_dir(files.t5), device)
    _load_state(lm, dict(pkg["best_state"]), lm_file, "the MusicGen LM")
    del pkg
    adapter_cfg = AdapterConfig()
    adapter_file = None
    if files.adapter is not None:
        adapter_file = _adapter_file(files.adapter)
        adapter_cfg = adapter_config_from_checkpoint(adapter_file)
    model = InstructMusicGen(lm, adapter_cfg)
    if adapter_file is not None:
        load_adapter(model, adapter_file)
    model = model.to(device=device, dtype=dtype).eval()
    if merge_lora:
        model.merge_lora()
    for p in model.parameters():
        p.requires_grad_(False)
    codec = load_codec(files.base, device)
    log.info("model loaded", extra={"base": files.base, "adapter": files.adapter,
                                    "device": str(device), "dtype": str(dtype)})
    return LoadedModel(model, codec, device, dtype, files)
