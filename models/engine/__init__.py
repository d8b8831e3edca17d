"""Batched decoding engine for Instruct-MusicGen (scheduler, batch state, runner, caches)."""
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

__all__ = ["EditEngine", "EditHandle", "EditOutput", "EditRequest", "EngineConfig", "EngineStats",
           "InputTooLong", "JobCanceled", "NonFiniteLogits", "DeviceFailed",
           "is_fatal_device_error", "StepInfo", "CacheBudgetTooSmall"]
