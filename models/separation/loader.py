"""Loading a Demucs separator (``htdemucs_6s``) without running code from its file.

A Demucs model file (demucs's ``serialize_model``; ``5c90dfd2-34c22ccb.th`` for htdemucs_6s) is
a pickled dict: ``klass`` (the model class), ``args``/``kwargs`` (its constructor's arguments),
``state`` (the tensors, float16 in the released files) and ``training_args`` (plain data). It
is read with :func:`models.checkpoint.read_checkpoint`: the class the file names comes back as
an inert :class:`~models.checkpoint.OpaqueObject` subclass carrying only its ``(module, name)``.
That name is looked up in :data:`DEMUCS_CLASSES`, the constructor's arguments must be plain data
(numbers, strings, lists, dicts), and the state is loaded with the same strict, shape-checked
load as the Instruct-MusicGen files (:func:`models.checkpoint.load_state_strict`): a missing,
unexpected or mis-shaped key raises :class:`CheckpointError` naming the key and the file.

A file named ``<signature>-<checksum>.th`` (demucs's own naming) must have a SHA-256 that starts
with ``<checksum>``, as demucs's ``LocalRepo`` checks.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import re
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import torch
from demucs.htdemucs import HTDemucs

from musicedit.logs import log_event

from ..checkpoint import CheckpointError, OpaqueObject, load_state_strict, read_checkpoint

log = logging.getLogger(__name__)

# The model classes a Demucs file may name: what htdemucs_6s needs. The engine relies on
# HTDemucs's fixed training segment (`valid_length`), so no other Demucs class is rebuilt.
DEMUCS_CLASSES: dict[tuple[str, str], type[torch.nn.Module]] = {
    ("demucs.htdemucs", "HTDemucs"): HTDemucs,
}
PACKAGE_KEYS = ("klass", "args", "kwargs", "state")
_CHECKSUMMED = re.compile(r"^[^-]+-([0-9a-f]{8})$")


@dataclass
class LoadedSeparator:
    """A Demucs model ready for inference.

    Attributes:
        model: the HTDemucs module, float32, in eval mode, on ``device``.
        file: the file it was read from.
    """

    model: HTDemucs
    device: torch.device
    file: Path

    @property
    def sources(self) -> tuple[str, ...]:
        """The model's sources as Demucs names them (``drums``, ``bass``, ...), in output order."""
        return tuple(self.model.sources)

    @property
    def stems(self) -> tuple[str, ...]:
        """The sources as the API spells stems (``Drums``, ``Bass``, ``Other``, ...)."""
        return tuple(stem_name(source) for source in self.sources)

    @property
    def sample_rate(self) -> int:
        return int(self.model.samplerate)

    @property
    def channels(self) -> int:
        return int(self.model.audio_channels)

    @property
    def segment_seconds(self) -> float:
        return float(self.model.segment)


def stem_name(source: str) -> str:
    """The API's spelling of a Demucs source name (``vocals`` -> ``Vocals``)."""
    return source.capitalize()


def separator_file(source: str | Path) -> Path:
    """The ``.th`` file itself, or the one ``.th`` file of a directory."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        files = sorted(path.glob("*.th"))
        if len(files) == 1:
            return files[0]
        raise CheckpointError(f"{path} holds {len(files)} .th files; a separator directory "
                              "holds exactly one Demucs model file (e.g. 5c90dfd2-34c22ccb.th)")
    raise CheckpointError(f"separator weights not found: {path} is neither a Demucs .th file "
                          "nor a directory holding one")


def verify_checksum(file: Path) -> None:
    """Check a ``<signature>-<checksum>.th`` file against the SHA-256 prefix in its name.

    Raises:
        CheckpointError: the file's digest does not start with the checksum in its name.
    """
    match = _CHECKSUMMED.match(file.stem)
    if match is None:
        return
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise CheckpointError(f"{file}: SHA-256 {digest.hexdigest()[:8]} does not match the "
                              f"checksum {match.group(1)} in its name; the file is damaged or "
                              "not the published one: download it again")


def _is_plain(value: tp.Any) -> bool:
    """Numbers, strings, None and lists/tuples/dicts of them: constructor arguments that
    are data, not objects the file could have named."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def model_class(pkg: dict, file: Path) -> type[torch.nn.Module]:
    """The allow-listed class the package names.

    Raises:
        CheckpointError: not a Demucs package, or it names a class outside
            :data:`DEMUCS_CLASSES`.
    """
    missing = [key for key in PACKAGE_KEYS if key not in pkg]
    if missing:
        raise CheckpointError(f"{file}: not a Demucs model file (no {missing[0]!r} key; found "
                              f"{sorted(pkg)[:6]})")
    klass = pkg["klass"]
    named = (klass.pickled_global if isinstance(klass, type) and issubclass(klass, OpaqueObject)
             else None)
    if named not in DEMUCS_CLASSES:
        what = ".".join(named) if named else type(klass).__name__
        allowed = ", ".join(".".join(name) for name in DEMUCS_CLASSES)
        raise CheckpointError(f"{file}: names model class {what}; only {allowed} is rebuilt")
    return DEMUCS_CLASSES[named]


def constructor_arguments(klass: type, pkg: dict, file: Path) -> tuple[tuple, dict]:
    """The package's ``args``/``kwargs``, checked to be plain data. Keyword arguments the
    installed class does not take are dropped, as demucs's own ``load_model`` does.

    Raises:
        CheckpointError: an argument is not plain data.
    """
    args, kwargs = pkg["args"], pkg["kwargs"]
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{file}: 'args' must be a list and 'kwargs' a dict")
    for index, value in enumerate(args):
        if not _is_plain(value):
            raise CheckpointError(f"{file}: constructor argument {index} is a "
                                  f"{type(value).__name__}, not plain data")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not _is_plain(value):
            raise CheckpointError(f"{file}: constructor argument {key!r} is a "
                                  f"{type(value).__name__}, not plain data")
    accepted = inspect.signature(klass).parameters
    dropped = sorted(key for key in kwargs if key not in accepted)
    if dropped:
        log_event(log, "separator_arguments_dropped", logging.WARNING, file=str(file),
                  arguments=",".join(dropped))
    return tuple(args), {k: v for k, v in kwargs.items() if k in accepted}


def model_state(pkg: dict, file: Path) -> dict[str, torch.Tensor]:
    state = pkg["state"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: 'state' must be a dict of tensors")
    if state.get("__quantized"):
        raise CheckpointError(f"{file}: a DiffQ-quantized Demucs model; use the unquantized "
                              "file (htdemucs_6s is published unquantized)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: state key {key!r} is a {type(value).__name__}, "
                                  "not a tensor")
    return state


def load_separator(source: str | Path, device: str | torch.device = "cpu") -> LoadedSeparator:
    """Read a Demucs model file (or a directory holding one) and rebuild its model.

    The weights are float32 on ``device`` (the released file stores float16; the engine runs
    reduced precision, if asked, under autocast).

    Raises:
        CheckpointError: the file is missing, damaged, names a class or argument that is not
            allowed, or its state does not match the model (naming the key and the file).
    """
    device = torch.device(device)
    file = separator_file(source)
    verify_checksum(file)
    # Demucs files are small (~80 MB); a plain read also accepts pre-zip torch files.
    pkg = read_checkpoint(file, mmap=False)
    klass = model_class(pkg, file)
    args, kwargs = constructor_arguments(klass, pkg, file)
    state = model_state(pkg, file)
    try:
        model = klass(*args, **kwargs)
    except Exception as exc:  # the class validates its arguments with asserts and errors
        raise CheckpointError(f"{file}: cannot build {klass.__name__} from the file's "
                              f"arguments ({type(exc).__name__}: {exc})") from exc
    load_state_strict(model, dict(state), file, f"the {klass.__name__} model")
    model = model.to(device=device, dtype=torch.float32).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    loaded = LoadedSeparator(tp.cast(HTDemucs, model), torch.device(device), file)
    log_event(log, "separator_loaded", file=str(file), device=str(device),
              sources=",".join(loaded.sources), segment_seconds=loaded.segment_seconds)
    return loaded
