"""Save a finetuned adapter as a model directory the one loader (and so the service) reads.

The directory holds `finetuned.ckpt` in the released Lightning layout
(`models.loader.save_release_checkpoint`), `musicedit.json` naming the stems it was
trained on, and links to the base model's files (`state_dict.bin`,
`compression_state_dict.bin`, `t5/`), so `--model DIR` / `MUSICEDIT_MODEL=DIR` loads it
and `MUSICEDIT_STEMS` may list its stems. The links point at the base model's local files
(its directory or the Hugging Face cache it was loaded from); nothing is downloaded.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..instruct_musicgen import InstructMusicGen
from ..loader import (
    ADAPTER_FILE,
    CODEC_FILE,
    LM_FILE,
    T5_DIR,
    ModelFiles,
    save_release_checkpoint,
    write_metadata,
)


def _local_base_file(source: str, filename: str) -> Path | None:
    local = Path(source)
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo_id=source, filename=filename, local_files_only=True))
    except Exception:  # not in the local cache: the loader fetches it by name instead
        return None


def _local_t5_dir(source: str) -> Path | None:
    local = Path(source)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id=source, local_files_only=True))
    except Exception:
        return None


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target.resolve(), link, target_is_directory=target.is_dir())


def save_adapter(model: InstructMusicGen, base: ModelFiles, stems: Sequence[str],
                 directory: Path, step: int, hyper_parameters: dict) -> Path:
    """Write the adapter of `model` and its stems to `directory`, linking the base files.

    Args:
        base: where the base MusicGen, EnCodec and T5 came from.
        stems: the stems the adapter was trained on (its instructions may name them).
        step: optimizer steps trained (the checkpoint's `global_step`).
        hyper_parameters: recorded in the checkpoint (learning rate, batch size, ...).
    Returns:
        `directory`.
    Raises:
        FileNotFoundError: the base model's weights are not on this machine.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in (LM_FILE, CODEC_FILE):
        found = _local_base_file(base.base, name)
        if found is None:
            raise FileNotFoundError(f"{name} of {base.base!r} is not on this machine")
        if found.resolve() != (directory / name).resolve():
            _link(found, directory / name)
    t5 = _local_t5_dir(base.t5)
    if t5 is not None and t5.resolve() != (directory / T5_DIR).resolve():
        _link(t5, directory / T5_DIR)
    tmp = directory / (ADAPTER_FILE + ".tmp")
    save_release_checkpoint(model, tmp, include_frozen_copies=False, global_step=step,
                            hyper_parameters=hyper_parameters)
    os.replace(tmp, directory / ADAPTER_FILE)
    write_metadata(directory, stems)
    return directory
