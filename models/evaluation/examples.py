"""Edit examples from multitrack stems, as the paper's instruction pipeline builds them (4.2).

For a target stem and an operation, a random non-empty subset of the track's other stems is
mixed with or without the target:

- add: input = the others, target = the others + the stem;
- remove: input = the others + the stem, target = the others;
- extract: input = the others + the stem, target = the stem.

Crops are taken at the same offset for input and target. As in the release's data module, a
crop is redrawn when the input or the target is too quiet or when more than 70% of the
difference between them is silent (the edit would be nearly a no-op). Input and target share
one gain, so the louder of the two peaks at `PEAK_LEVEL`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from musicedit.instructions import TEMPLATES

from .stem_sets import StemTrack

TASKS = ("add", "remove", "extract")
PEAK_LEVEL = 0.9
# The release's data module: peaks below 0.1 and differences quieter than 0.01 over more than
# 70% of the samples are redrawn (thresholds on audio at our peak level).
MIN_PEAK = 0.1
SILENT_DIFFERENCE = 0.01
MAX_SILENT_FRACTION = 0.7
MAX_DRAWS = 20


class NoExamples(ValueError):
    """The tracks cannot give an example for a requested task and stem."""


@dataclass(frozen=True)
class EditExample:
    """One instruction with its input and the audio a perfect edit returns.

    Attributes:
        input, target: `[C, N]` float32 at `sample_rate`.
        instruction: the template the model is given (`Music piece. Instruct: No Bass.`).
        target_stems: the stems audible in the target (for text-audio scores such as CLAP).
    """

    example_id: str
    task: str
    stem: str
    instruction: str
    input: np.ndarray
    target: np.ndarray
    sample_rate: int
    track_id: str
    offset: float
    target_stems: tuple[str, ...]

    @property
    def caption(self) -> str:
        """What the target sounds like, for CLAP: `"Drums Bass music"`."""
        return " ".join(self.target_stems) + " music"


def _crop(track: StemTrack, stems: Sequence[str], offset: float, seconds: float,
          sample_rate: int, channels: int) -> np.ndarray:
    """The mix of `stems` (at least one) of `track`: `[channels, N]` float32."""
    mix = track.read(stems[0], offset, seconds, sample_rate, channels)
    for stem in stems[1:]:
        mix = mix + track.read(stem, offset, seconds, sample_rate, channels)
    return mix


def _usable(x: np.ndarray, y: np.ndarray) -> bool:
    silent = np.mean(np.abs(y - x) < SILENT_DIFFERENCE)
    return min(np.abs(x).max(), np.abs(y).max()) >= MIN_PEAK and silent <= MAX_SILENT_FRACTION


def make_example(track: StemTrack, task: str, stem: str, rng: np.random.Generator, seconds: float,
                 sample_rate: int, channels: int, example_id: str) -> EditExample | None:
    """Draw one example of `task` on `stem` from `track`; None if no draw passes the
    quality checks (the stem is too sparse in this track)."""
    others = [s for s in track.stem_names if s != stem]
    if stem not in track.stem_names or not others or track.seconds < seconds:
        return None
    for _ in range(MAX_DRAWS):
        chosen = list(rng.choice(others, size=int(rng.integers(1, len(others) + 1)), replace=False))
        offset = float(rng.uniform(0.0, track.seconds - seconds))
        rest = _crop(track, chosen, offset, seconds, sample_rate, channels)
        part = track.read(stem, offset, seconds, sample_rate, channels)
        if task == "add":
            x, y, audible = rest, rest + part, [stem, *chosen]
        elif task == "remove":
            x, y, audible = rest + part, rest, chosen
        elif task == "extract":
            x, y, audible = rest + part, part, [stem]
        else:
            raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        peak = max(np.abs(x).max(), np.abs(y).max())
        if peak <= 0:
            continue
        gain = PEAK_LEVEL / peak
        x, y = (x * gain).astype(np.float32), (y * gain).astype(np.float32)
        if _usable(x, y):
            return EditExample(example_id, task, stem, TEMPLATES[task].format(stem=stem), x, y,
                               sample_rate, track.track_id, offset,
                               tuple(s for s in track.stem_names if s in audible))
    return None


def build_examples(tracks: Sequence[StemTrack], stems: Sequence[str], count: int, seed: int = 0,
                   seconds: float = 5.0, sample_rate: int = 32000, channels: int = 1,
                   tasks: Sequence[str] = TASKS,
                   progress: Callable[[EditExample], object] | None = None
                   ) -> list[EditExample]:
    """`count` examples, balanced over `tasks` x `stems` (round robin), from `tracks`.

    Tracks are used in a seeded order, each for the next example it can give, so a synthesized
    set is rendered only as far as needed. Deterministic for `seed` and the tracks.

    Args:
        progress: called with each example as it is made (a progress bar).
    Raises:
        NoExamples: a (task, stem) pair no track can give (the stem is in no track, or never
            audible enough).
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}: use one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tracks))
    pairs = [(task, stem) for stem in stems for task in tasks]
    examples, cursor = [], 0
    for i in range(count):
        task, stem = pairs[i % len(pairs)]
        for attempt in range(len(order)):
            track = tracks[int(order[(cursor + attempt) % len(order)])]
            example = make_example(track, task, stem, rng, seconds, sample_rate, channels,
                                   f"{i:05d}-{task}-{stem}")
            if example is not None:
                cursor += attempt + 1
                break
        else:
            raise NoExamples(f"no track gives a usable {task} example for stem {stem!r} "
                             f"({len(tracks)} tracks): is it one of the tracks' stems?")
        examples.append(example)
        if progress is not None:
            progress(example)
    return examples
