"""Batched decoding engine for Instruct-MusicGen (scheduler, runner, static caches, windows)."""
from .engine import (EditEngine, EditHandle, EditOutput, EditRequest, EngineConfig, EngineStats,
                     InputTooLong, JobCanceled, NonFiniteLogits, StepInfo)
from .scheduler import CacheBudgetTooSmall

__all__ = ["EditEngine", "EditHandle", "EditOutput", "EditRequest", "EngineConfig", "EngineStats",
           "InputTooLong", "JobCanceled", "NonFiniteLogits", "StepInfo", "CacheBudgetTooSmall"]
