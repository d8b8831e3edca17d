"""Source separation (Demucs htdemucs_6s): ``remove X`` and ``extract X`` at separation quality.

:func:`~models.separation.presets.resolve_separator` finds the weights and
:func:`~models.separation.loader.load_separator` reads them without running code from the file.
"""
from .loader import DEMUCS_CLASSES, LoadedSeparator, load_separator
from .presets import SEPARATOR_NAMES, resolve_separator

__all__ = ["DEMUCS_CLASSES", "LoadedSeparator", "load_separator", "SEPARATOR_NAMES",
           "resolve_separator"]
