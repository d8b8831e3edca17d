"""CUDA streams of the threads that call the engine (EnCodec and T5 work off the engine's
stream)."""
from __future__ import annotations

import typing as tp

import torch

from .errors import is_fatal_device_error

if tp.TYPE_CHECKING:
    from .engine import EditEngine


class CallerStream:
    """Run a caller's codec/text work on its own stream; on leaving, wait for that stream.
    A sticky device error raised there stops the engine too (the context is shared)."""

    def __init__(self, engine: EditEngine, stream: torch.cuda.Stream):
        self.engine = engine
        self.stream = stream
        self._scope = torch.cuda.stream(stream)

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self.stream.synchronize()
        except Exception as error:
            exc = error
            raise
        finally:
            self._scope.__exit__(None, None, None)
            if exc is not None and is_fatal_device_error(exc):
                self.engine._device_failed(exc)
