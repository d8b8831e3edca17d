"""Multitrack stem sets: tracks whose stems can be read one segment at a time.

Three sources give the same `StemTrack` interface:

- `SynthStemSet`: songs synthesized on demand (`models.evaluation.synth`);
- `slakh_tracks`: a local Slakh2100 copy (`<root>/<split>/TrackNNNNN/metadata.yaml`,
  `stems/SNN.flac` or `.wav`; stems grouped by their `inst_class`);
- `musdb_tracks`: a local MUSDB18-HQ copy (`<root>/<split>/<name>/{drums,bass,other,
  vocals}.wav`).

Nothing is ever downloaded: a directory that does not have the layout is an error that says
which layout was expected. Stem names are spelled as `MUSICEDIT_STEMS` keeps them (first
letter upper case, the rest lower case), so a model finetuned on them can be served.
"""
from __future__ import annotations

import typing as tp
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .synth import SynthSettings, SynthTrack, synthesize_track

AUDIO_SUFFIXES = (".flac", ".wav")
# Slakh's second string family (GM programs 48-55: ensembles) is the same stem to a listener.
_SLAKH_ALIASES = {"strings (continued)": "Strings"}
MUSDB_STEMS = ("drums", "bass", "other", "vocals")


class StemSetError(ValueError):
    """A stem-set directory is missing or does not have the expected layout."""


def stem_name(label: str) -> str:
    """A data set's instrument label as a stem name (`"Synth Pad"` -> `"Synth pad"`)."""
    label = " ".join(label.split())
    alias = _SLAKH_ALIASES.get(label.lower())
    return alias or label[:1].upper() + label[1:].lower()


class StemTrack(tp.Protocol):
    """A multitrack song whose stems are read by segment.

    Its members are read-only, so both `ArrayTrack` (properties) and `FileTrack` (dataclass
    fields) are stem tracks.
    """

    @property
    def track_id(self) -> str: ...

    @property
    def stem_names(self) -> tuple[str, ...]: ...

    @property
    def seconds(self) -> float: ...

    def read(self, stem: str, offset: float, seconds: float, sample_rate: int,
             channels: int) -> np.ndarray:
        """`[channels, round(seconds * sample_rate)]` float32 of `stem` from `offset`
        seconds (zero-padded past the end)."""
        ...


def _fit(audio: np.ndarray, rate: int, sample_rate: int, channels: int, num: int) -> np.ndarray:
    """`[C, N]` at `rate` -> `[channels, num]` float32 at `sample_rate`."""
    import julius
    import torch
    if audio.shape[0] != channels:
        audio = audio.mean(axis=0, keepdims=True)
        if channels == 2:
            audio = np.repeat(audio, 2, axis=0)
    if rate != sample_rate:
        audio = julius.resample_frac(torch.from_numpy(np.ascontiguousarray(audio)), rate,
                                     sample_rate).numpy()
    audio = audio[:, :num]
    return np.pad(audio, ((0, 0), (0, num - audio.shape[1]))).astype(np.float32)


@dataclass
class ArrayTrack:
    """A track held in memory (a synthesized song)."""

    track_id: str
    sample_rate: int
    stems: dict[str, np.ndarray]  # [C, N] float32 each

    @property
    def stem_names(self) -> tuple[str, ...]:
        return tuple(self.stems)

    @property
    def seconds(self) -> float:
        return next(iter(self.stems.values())).shape[1] / self.sample_rate

    def read(self, stem: str, offset: float, seconds: float, sample_rate: int,
             channels: int) -> np.ndarray:
        start = int(round(offset * self.sample_rate))
        stop = start + int(round(seconds * self.sample_rate)) + 1
        return _fit(self.stems[stem][:, start:stop], self.sample_rate, sample_rate, channels,
                    int(round(seconds * sample_rate)))


@dataclass
class FileTrack:
    """A track on disk: each stem is the sum of one or more audio files of one rate."""

    track_id: str
    files: dict[str, list[Path]]
    seconds: float = field(init=False)

    def __post_init__(self) -> None:
        self.seconds = min(sf.info(str(p)).duration for ps in self.files.values() for p in ps)

    @property
    def stem_names(self) -> tuple[str, ...]:
        return tuple(self.files)

    def read(self, stem: str, offset: float, seconds: float, sample_rate: int,
             channels: int) -> np.ndarray:
        total, rate = None, None
        for path in self.files[stem]:
            with sf.SoundFile(str(path)) as f:
                rate = f.samplerate
                f.seek(min(int(round(offset * rate)), f.frames))
                data = f.read(int(round(seconds * rate)) + 1, dtype="float32", always_2d=True).T
            total = data if total is None else _sum_padded(total, data)
        assert total is not None and rate is not None
        return _fit(total, rate, sample_rate, channels, int(round(seconds * sample_rate)))


def _sum_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape[0] != b.shape[0]:
        a, b = a.mean(axis=0, keepdims=True), b.mean(axis=0, keepdims=True)
    n = max(a.shape[1], b.shape[1])
    return np.pad(a, ((0, 0), (0, n - a.shape[1]))) + np.pad(b, ((0, 0), (0, n - b.shape[1])))


class SynthStemSet(Sequence[ArrayTrack]):
    """`size` synthesized songs, each rendered the first time it is read."""

    def __init__(self, seed: int, size: int, settings: SynthSettings | None = None):
        # `size`, not `count`: an attribute named `count` would hide `Sequence.count`.
        self.seed, self.size, self.settings = seed, size, settings or SynthSettings()
        self._cache: dict[int, ArrayTrack] = {}

    def __len__(self) -> int:
        return self.size

    @tp.overload
    def __getitem__(self, index: int) -> ArrayTrack: ...
    @tp.overload
    def __getitem__(self, index: slice) -> Sequence[ArrayTrack]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if not -self.size <= index < self.size:
            raise IndexError(index)
        index %= self.size
        if index not in self._cache:
            track: SynthTrack = synthesize_track(self.seed, index, self.settings)
            self._cache[index] = ArrayTrack(track.track_id, track.sample_rate, track.stems)
        return self._cache[index]


def _split_dir(root: Path, split: str | None, what: str) -> Path:
    if not root.is_dir():
        raise StemSetError(f"{what} directory {root} does not exist (it is never downloaded: "
                           "point at a local copy)")
    if split and (root / split).is_dir():
        return root / split
    return root


def slakh_tracks(root: str | Path, split: str | None = "test") -> list[FileTrack]:
    """Tracks of a local Slakh2100 copy, stems grouped by their metadata's `inst_class`.

    Args:
        root: the directory holding `train/`, `validation/`, `test/` (or the track
            folders themselves).
        split: which split to read when `root` has split folders.
    Raises:
        StemSetError: no track folder with a `metadata.yaml` and rendered stems.
    """
    import yaml
    base = _split_dir(Path(root), split, "Slakh2100")
    tracks = []
    for folder in sorted(p for p in base.iterdir() if (p / "metadata.yaml").is_file()):
        metadata = yaml.safe_load((folder / "metadata.yaml").read_text()) or {}
        files: dict[str, list[Path]] = {}
        for stem_id, info in sorted((metadata.get("stems") or {}).items()):
            if not isinstance(info, dict) or info.get("audio_rendered") is False:
                continue
            path = next((folder / "stems" / f"{stem_id}{s}" for s in AUDIO_SUFFIXES
                         if (folder / "stems" / f"{stem_id}{s}").is_file()), None)
            if path is not None and isinstance(info.get("inst_class"), str):
                files.setdefault(stem_name(info["inst_class"]), []).append(path)
        if files:
            tracks.append(FileTrack(folder.name, files))
    if not tracks:
        raise StemSetError(f"{base} has no Slakh2100 tracks: expected TrackNNNNN/metadata.yaml "
                           "with stems/SNN.flac (or .wav) files")
    return tracks


def musdb_tracks(root: str | Path, split: str | None = "test") -> list[FileTrack]:
    """Tracks of a local MUSDB18-HQ copy (stems Drums, Bass, Other, Vocals).

    Raises:
        StemSetError: no track folder holding the four stem WAV files.
    """
    base = _split_dir(Path(root), split, "MUSDB18-HQ")
    tracks = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        paths = {s: folder / f"{s}.wav" for s in MUSDB_STEMS}
        if all(p.is_file() for p in paths.values()):
            tracks.append(FileTrack(folder.name, {stem_name(s): [p] for s, p in paths.items()}))
    if not tracks:
        raise StemSetError(f"{base} has no MUSDB18-HQ tracks: expected <track>/"
                           f"{{{','.join(MUSDB_STEMS)}}}.wav")
    return tracks
