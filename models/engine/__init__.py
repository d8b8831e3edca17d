"""Batched decoding engine for Instruct-MusicGen (scheduler, batch state, runner, caches).

The names below are imported on first use (PEP 562), so `models.engine.errors`,
`models.engine.types` and `models.engine.lifecycle` load without the model code behind
`EditEngine` (audiocraft, transformers: about 1 GB of a process's memory). A separation-only
worker (`models.separation`) uses those and never the decoder.
"""
from __future__ import annotations

import importlib
import typing as tp

_EXPORTS = {
    "EditEngine": ".engine", "EditHandle": ".engine",
    "DeviceFailed": ".errors", "InputTooLong": ".errors", "JobCanceled": ".errors",
    "NonFiniteLogits": ".errors", "is_fatal_device_error": ".errors",
    "CacheBudgetTooSmall": ".scheduler",
    "EditOutput": ".types", "EditRequest": ".types", "EngineConfig": ".types",
    "EngineStats": ".types", "StepInfo": ".types",
}
__all__ = ["EditEngine", "EditHandle", "DeviceFailed", "InputTooLong", "JobCanceled",
           "NonFiniteLogits", "is_fatal_device_error", "CacheBudgetTooSmall", "EditOutput",
           "EditRequest", "EngineConfig", "EngineStats", "StepInfo"]
assert set(__all__) == set(_EXPORTS)

if tp.TYPE_CHECKING:
    from .engine import EditEngine, EditHandle
    from .errors import (
        DeviceFailed,
        InputTooLong,
        JobCanceled,
        NonFiniteLogits,
        is_fatal_device_error,
    )
    from .scheduler import CacheBudgetTooSmall
    from .types import EditOutput, EditRequest, EngineConfig, EngineStats, StepInfo


def __getattr__(name: str) -> tp.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
