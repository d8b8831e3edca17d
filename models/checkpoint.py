"""Reading checkpoints without running code from them.

PyTorch checkpoints are pickles: a plain `pickle.load` (or `torch.load(weights_only=False)`)
runs whatever callables the file names. Both the audiocraft files (`state_dict.bin`,
`compression_state_dict.bin`) and the released Instruct-MusicGen Lightning `.ckpt` are read
here with an unpickler that resolves only tensor-rebuilding functions, storages and plain
containers. Any other class the file names (the Lightning hparams of the release refer to the
authors' own modules) becomes an inert `OpaqueObject` that keeps its state but runs
nothing.
"""
from __future__ import annotations

import collections
import pickle
import types
import typing as tp
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not match the model it is loaded into."""


class OpaqueObject:
    """Stand-in for a class a checkpoint names but we refuse to import. Runs no code.

    Each refused global becomes its own subclass whose ``pickled_global`` is the
    ``(module, name)`` the file named, so that a loader can map it to a class of its own
    allow-list (a Demucs package names its model class) without importing anything.
    """

    pickled_global: tuple[str, str] = ("", "")

    def __init__(self, *args: tp.Any, **kwargs: tp.Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: tp.Any) -> None:
        self.state = state

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> OpaqueObject:
        return OpaqueObject(*args, **kwargs)


def _opaque_class(module: str, name: str) -> type:
    return type(name, (OpaqueObject,), {"__module__": f"opaque.{module}",
                                        "pickled_global": (module, name)})


# (module, name) pairs a checkpoint may name. Everything else becomes an OpaqueObject.
_ALLOWED_GLOBALS: dict[tuple[str, str], tp.Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): getattr(torch._utils, "_rebuild_tensor_v3", None),
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
}
for _dtype_name in ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32",
                    "int64", "uint8", "bool", "complex64"):
    _ALLOWED_GLOBALS[("torch", _dtype_name)] = getattr(torch, _dtype_name)
for _storage in ("FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage",
                 "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"):
    _ALLOWED_GLOBALS[("torch", _storage)] = getattr(torch, _storage)
# Plain numbers that numpy pickles (OmegaConf configs saved as dicts sometimes carry them).
_ALLOWED_NUMPY = {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (tensors and plain containers)."""

    def find_class(self, module: str, name: str) -> tp.Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if (module, name) in _ALLOWED_NUMPY:
            import numpy  # noqa: F401  (numpy scalars are data, not code)
            return super().find_class(module, name)
        return _opaque_class(module, name)


# torch.load wants a module-like object exposing `Unpickler` (and `load` for legacy files).
restricted_pickle = types.SimpleNamespace(
    Unpickler=RestrictedUnpickler,
    load=lambda f, **kw: RestrictedUnpickler(f, **kw).load(),
    __name__="restricted_pickle",
)


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """Read a PyTorch checkpoint file (zip format) without executing code from it.

    Args:
        path: the file.
        mmap: memory-map tensor storages (a 14.6 GB checkpoint then costs no copy in RAM).
    Returns:
        The top-level dict. Tensors are on the CPU.
    Raises:
        CheckpointError: the file is missing, not a checkpoint, or its top level is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        # weights_only=False is required to pass a pickle_module; safety comes from
        # RestrictedUnpickler, which resolves no callable outside the allow-list above.
        obj = torch.load(path, map_location="cpu", pickle_module=restricted_pickle,
                         weights_only=False, mmap=mmap)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many kinds for a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], file: Path,
                      what: str) -> None:
    """Strict, shape-checked load that names the key and the file on any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{file}: {what} is missing key {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise CheckpointError(f"{file}: {what} has unexpected key {unexpected[0]!r}"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1
                                 else ""))
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{file}: {what} key {key!r} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")
    module.load_state_dict(state, strict=True, assign=True)
