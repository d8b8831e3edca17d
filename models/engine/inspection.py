"""Count what one engine step dispatches: ATen calls per layer and host synchronisations.

Used by `bench/decode.py` (it prints both) and by the tests that hold the engine to "at most
40 ATen calls per layer in an eager step" and "a steady-state step reads nothing back from
the device and builds no tensor from a Python list".
"""
from __future__ import annotations

import collections
import typing as tp
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ATen ops that copy a device value to the host (`item`, `bool(t)`, `int(t)`...) or build a
# tensor from Python data (`torch.tensor([...])`).
HOST_READ_OPS = ("aten._local_scalar_dense",)
FROM_PYTHON_OPS = ("aten.lift_fresh", "aten.lift")


@dataclass
class StepCounts:
    """What one step dispatched."""

    layers: int
    total: collections.Counter = field(default_factory=collections.Counter)
    in_layers: collections.Counter = field(default_factory=collections.Counter)
    host_reads: int = 0          # `_local_scalar_dense`, `Tensor.tolist`, `Tensor.item`
    from_python: int = 0         # tensors built from Python lists/scalars

    @property
    def per_layer(self) -> float:
        return sum(self.in_layers.values()) / max(1, self.layers)

    @property
    def outside_layers(self) -> int:
        return sum(self.total.values()) - sum(self.in_layers.values())


class _Counter(TorchDispatchMode):
    def __init__(self, counts: StepCounts):
        super().__init__()
        self.counts = counts
        self.in_layer = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func).rsplit(".", 1)[0]
        self.counts.total[name] += 1
        if self.in_layer:
            self.counts.in_layers[name] += 1
        if name in HOST_READ_OPS:
            self.counts.host_reads += 1
        if name in FROM_PYTHON_OPS:
            self.counts.from_python += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_dispatch(model: tp.Any) -> tp.Iterator[StepCounts]:
    """Count the ATen calls (and host reads) made inside the block; calls made inside
    `model._decode_layer` (an `InstructMusicGen`) are attributed to layers."""
    counts = StepCounts(layers=model.num_layers)
    mode = _Counter(counts)
    decode_layer = model._decode_layer
    tolist, item = torch.Tensor.tolist, torch.Tensor.item

    def in_layer(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        mode.in_layer = True
        try:
            return decode_layer(*args, **kwargs)
        finally:
            mode.in_layer = False

    def counted(method: tp.Callable[..., tp.Any]) -> tp.Callable[..., tp.Any]:
        def wrapper(self: torch.Tensor, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            counts.host_reads += 1
            return method(self, *args, **kwargs)
        return wrapper

    model._decode_layer = in_layer
    torch.Tensor.tolist = counted(tolist)  # type: ignore[method-assign]
    torch.Tensor.item = counted(item)  # type: ignore[method-assign]
    try:
        with mode:
            yield counts
    finally:
        del model._decode_layer
        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
        torch.Tensor.item = item  # type: ignore[method-assign]
