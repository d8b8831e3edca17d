"""Separator presets: where ``--separator tiny|htdemucs_6s-random|htdemucs_6s|PATH`` gets weights.

- ``tiny``: random weights from the same :class:`demucs.htdemucs.HTDemucs` class at small
  dimensions (1 s segments, 88k parameters), written once into the cache directory in the
  released file layout (demucs's ``serialize_model``, float16 state, ``<sig>-<sha256>.th``)
  and read back by :func:`models.separation.loader.load_separator`. Milliseconds a segment on
  a CPU.
- ``htdemucs_6s-random``: htdemucs_6s's dimensions (41.5M parameters) with random weights,
  for benchmarks.
- ``htdemucs_6s``: the released weights (``5c90dfd2-34c22ccb.th``, research use only: see
  docs/separation.md), from ``cache_dir/separation/htdemucs_6s/`` or, when online, downloaded
  once from the URL demucs 4.0.1 itself uses and checked against the SHA-256 prefix in its name.
- a path: a Demucs ``.th`` file, or a directory holding one (demucs's ``--repo`` layout).

Every preset lives under ``cache_dir/separation/`` (the Instruct-MusicGen presets use the same
cache directory).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..cache_files import write_once
from ..checkpoint import CheckpointError

SOURCES_6S = ("drums", "bass", "other", "vocals", "guitar", "piano")
_IO = {"sources": list(SOURCES_6S), "audio_channels": 2, "samplerate": 44100}
# htdemucs_6s is htdemucs with two more sources: HTDemucs's defaults plus a 512-wide
# cross-domain transformer and 7.8 s training segments. The released file carries its own.
HTDEMUCS_6S_KWARGS = {**_IO, "segment": 7.8, "bottom_channels": 512}
# Small enough for tests: three layers bring the transformer's sequences to ~1.4k tokens.
TINY_KWARGS = {**_IO, "segment": 1.0, "channels": 8, "depth": 3, "nfft": 512, "t_layers": 1,
               "t_heads": 2, "t_hidden_scale": 2.0, "dconv_comp": 4}
RANDOM_SEPARATORS = {"tiny": TINY_KWARGS, "htdemucs_6s-random": HTDEMUCS_6S_KWARGS}

HTDEMUCS_6S_FILE = "5c90dfd2-34c22ccb.th"
# demucs/pretrained.py's ROOT_URL + the `hybrid_transformer/` root that remote/files.txt
# lists the file under (htdemucs_6s.yaml: a bag of this one model).
HTDEMUCS_6S_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/" + HTDEMUCS_6S_FILE
SEPARATOR_NAMES = (*RANDOM_SEPARATORS, "htdemucs_6s")


def resolve_separator(name: str, cache_dir: str | Path) -> Path:
    """The Demucs file (or directory holding one) that ``name`` stands for, writing a random
    preset or downloading the released weights into ``cache_dir/separation`` on first use.

    Raises:
        CheckpointError: htdemucs_6s is not cached and cannot be downloaded.
        ValueError: ``name`` is neither a preset nor an existing path.
    """
    cache = Path(cache_dir) / "separation"
    if name in RANDOM_SEPARATORS:
        return ensure_random_separator(name, cache)
    if name == "htdemucs_6s":
        return ensure_htdemucs_6s(cache)
    if not Path(name).exists():
        raise ValueError(f"unknown separator {name!r}: use one of {', '.join(SEPARATOR_NAMES)} "
                         "or a Demucs .th file (or a directory holding one)")
    return Path(name)


def ensure_random_separator(name: str, cache: Path, seed: int = 0) -> Path:
    """Write random preset ``name`` to ``cache/name`` once (atomically); returns its directory."""
    return write_once(cache / name, lambda tmp: write_random_separator(
        tmp, RANDOM_SEPARATORS[name], signature=name.replace("-", "_"), seed=seed))


def write_random_separator(directory: Path, kwargs: dict, signature: str, seed: int = 0
                           ) -> tuple[torch.nn.Module, Path]:
    """Build an HTDemucs with random weights and write it as demucs publishes models: its own
    ``serialize_model`` (class, arguments, float16 state) saved as ``<signature>-<sha256[:8]>.th``.

    Returns:
        The model as built (float32) and the file written.
    """
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum, serialize_model
    from omegaconf import OmegaConf
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    model = HTDemucs(**kwargs).eval()
    training_args = OmegaConf.create({"model": "htdemucs", "weights": "random (musicedit)"})
    save_with_checksum(serialize_model(model, training_args), directory / f"{signature}.th")
    (file,) = directory.glob(f"{signature}-*.th")
    return model, file


def ensure_htdemucs_6s(cache: Path) -> Path:
    """The released htdemucs_6s file, downloaded once into ``cache/htdemucs_6s``.

    Raises:
        CheckpointError: not cached and the download failed (offline, or a wrong digest).
    """
    target = cache / "htdemucs_6s" / HTDEMUCS_6S_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    checksum = HTDEMUCS_6S_FILE.split("-")[1].removesuffix(".th")
    try:
        # Downloads to a temporary file, checks the digest, then moves it into place.
        torch.hub.download_url_to_file(HTDEMUCS_6S_URL, str(target), hash_prefix=checksum,
                                       progress=False)
    except Exception as exc:
        raise CheckpointError(
            f"htdemucs_6s is not in {target.parent} and the download from {HTDEMUCS_6S_URL} "
            f"failed ({type(exc).__name__}: {exc}); put {HTDEMUCS_6S_FILE} in a directory and "
            "pass that directory as the separator") from exc
    return target
