"""Errors of the decoding engine, and which device errors end a worker's usefulness."""
from __future__ import annotations

import torch


class JobCanceled(Exception):
    """The job was canceled before it finished."""


class InputTooLong(ValueError):
    """The input is longer than the engine's configured maximum."""


class NonFiniteLogits(RuntimeError):
    """The model produced NaN/inf for this job (its input or weights are broken)."""


class DeviceFailed(RuntimeError):
    """The engine's device hit an unrecoverable (sticky) error and the engine stopped.

    The job did not fail on its own account: it can run again on a healthy worker.
    """


# Sticky CUDA errors: once raised, every later call on the context fails the same way
# (CUDA runtime docs: "the process must be terminated and relaunched"). Out-of-memory and
# invalid-argument errors are not among them.
_STICKY_CUDA_ERRORS = (
    "device-side assert triggered",
    "an illegal memory access was encountered",
    "an illegal instruction was encountered",
    "misaligned address",
    "unspecified launch failure",
    "uncorrectable ECC error",
    "the launch timed out and was terminated",
    "hardware stack error",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUBLAS_STATUS_INTERNAL_ERROR",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "unrecoverable",
)


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether `exc` is a sticky device error after which the process cannot compute again.

    A fault one job's data triggers (a shape, a NaN, an allocation that does not fit) is not
    fatal: the engine narrows it down to that job. A sticky CUDA error is: every later step
    would fail, so the engine stops and the worker exits for its jobs to run elsewhere.
    """
    if isinstance(exc, DeviceFailed):
        return True
    if isinstance(exc, torch.OutOfMemoryError) or not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return any(marker in text for marker in _STICKY_CUDA_ERRORS)
