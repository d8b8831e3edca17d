"""Directories written once into a shared cache (the random presets, the separator's), safely
against concurrent writers: built beside the target, then renamed into place. Imports no
model code, so the separator's presets do not pull in audiocraft."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = ".complete"


def write_once(target: Path, write: Callable[[Path], object]) -> Path:
    """Make directory `target` with `write(tmp)` once: written beside it, then renamed into
    place, so concurrent processes never see half a preset. Returns `target`."""
    if not (target / COMPLETE_MARKER).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            write(tmp)
            (tmp / COMPLETE_MARKER).touch()
            try:
                tmp.rename(target)
            except OSError:  # another process won the race; its copy is as good as ours
                if not (target / COMPLETE_MARKER).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
