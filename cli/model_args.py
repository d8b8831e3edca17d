"""Options shared by the commands that load a model (`edit`, `eval`, `finetune`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="tiny | small-random | large | a model directory (default: tiny)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where random presets are written (default: the worker's, "
                        "MUSICEDIT_MODEL_CACHE_DIR or <MUSICEDIT_DATA_DIR>/models)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def model_cache_dir(args: argparse.Namespace) -> Path:
    from musicedit.settings import Settings
    return args.cache_dir or Settings().effective_model_cache_dir


def device(args: argparse.Namespace) -> str:
    """``--device``, with ``auto`` resolved to cuda when a GPU is present."""
    if args.device != "auto":
        return args.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def csv(value: str) -> tuple[str, ...]:
    """``"Drums, bass"`` -> ``("Drums", "bass")`` (argparse ``type``)."""
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items
