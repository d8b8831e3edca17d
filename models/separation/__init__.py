"""Source separation (Demucs htdemucs_6s): ``remove X`` and ``extract X`` at separation quality.

:func:`~models.separation.presets.resolve_separator` finds the weights,
:func:`~models.separation.loader.load_separator` reads them without running code from the file,
and :class:`~models.separation.engine.SeparationEngine` batches the segments of many jobs.
"""
from .engine import SeparationEngine, SeparationHandle
from .loader import DEMUCS_CLASSES, LoadedSeparator, load_separator
from .memory import SeparationBudgetTooSmall
from .mixing import OPERATIONS, StemEdit, StemOperation, UnknownStem, UnsupportedOperation
from .presets import SEPARATOR_NAMES, resolve_separator
from .types import (
    SeparationConfig,
    SeparationOutput,
    SeparationRequest,
    SeparationStats,
    SeparationStep,
)

__all__ = ["SeparationEngine", "SeparationHandle", "DEMUCS_CLASSES", "LoadedSeparator",
           "load_separator", "SeparationBudgetTooSmall", "OPERATIONS", "StemEdit", "StemOperation",
           "UnknownStem", "UnsupportedOperation", "SEPARATOR_NAMES", "resolve_separator",
           "SeparationConfig", "SeparationOutput", "SeparationRequest", "SeparationStats",
           "SeparationStep"]
