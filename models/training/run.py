"""`musicedit finetune`: data -> codes -> adapters-only training -> a servable model directory.

`run_finetune` loads the base model through the one loader (LoRA unmerged, float32
master weights), builds add/remove/extract examples for every stem of the data (synthesized,
or a local Slakh2100 / MUSDB18-HQ copy) and a held-out set from other songs, encodes both once
(saved in the run directory with the checkpoints, so a resumed run uses the same data), trains
(`models.training.loop.finetune`) and saves the adapter with its stems
(`models.training.adapter.save_adapter`).
"""
from __future__ import annotations

import json
import typing as tp
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..evaluation.examples import TASKS, build_examples
from ..evaluation.run import ProgressFactory
from ..evaluation.stem_sets import StemTrack, SynthStemSet, musdb_tracks, slakh_tracks
from ..evaluation.synth import ACCOMPANIMENT, SOUNDFONT, SynthSettings, song_stems
from .data import CodeSet, encode_examples
from .loop import FinetuneConfig, TrainState, finetune

TRAIN_DATA_FILE = "train_codes.pt"
HELD_OUT_DATA_FILE = "held_out_codes.pt"
SETTINGS_FILE = "settings.json"
# Synthesized songs per example drawn from them (each song gives crops at random offsets).
EXAMPLES_PER_SONG = 4
# Held-out synthesized songs come from this seed offset: never the training songs.
HELD_OUT_SEED_OFFSET = 1_000_000


@dataclass
class FinetuneSettings:
    """What `musicedit finetune` runs (`config` holds the optimisation recipe)."""

    output: Path
    model: str = "tiny"
    cache_dir: Path = Path("var/models")
    device: str = "cpu"
    run_dir: Path | None = None          # default: <output>/run
    data: str = "synth"                  # synth | slakh | musdb
    data_dir: Path | None = None
    stems: tuple[str, ...] | None = None  # default: the release's four (synth) / all the data's
    tasks: tuple[str, ...] = TASKS
    train_examples: int = 512
    held_out_examples: int = 48
    seconds: float = 5.0
    from_scratch: bool = False
    soundfont: Path = SOUNDFONT
    config: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def effective_run_dir(self) -> Path:
        return self.run_dir or self.output / "run"


def _advance(bar: tp.Any) -> tp.Callable[[object], None] | None:
    """A per-item progress callback for `bar` (a tqdm bar), or None without one."""
    return (lambda _: bar.update(1)) if bar else None


def data_stems(tracks: tp.Sequence[StemTrack], wanted: tp.Sequence[str] | None) -> tuple[str, ...]:
    """The stems to train: `wanted`, or every stem that appears in a track with another stem.

    Raises:
        ValueError: a wanted stem is in no track.
    """
    present: dict[str, None] = {}
    for track in tracks:
        if len(track.stem_names) > 1:
            present.update(dict.fromkeys(track.stem_names))
    if wanted:
        missing = [s for s in wanted if s not in present]
        if missing:
            raise ValueError(f"stem {missing[0]!r} is in none of the tracks; they have "
                             f"{', '.join(present)}")
        return tuple(wanted)
    return tuple(present)


def _tracks(settings: FinetuneSettings, sample_rate: int
            ) -> tuple[tp.Sequence[StemTrack], tp.Sequence[StemTrack], tuple[str, ...]]:
    """Training tracks, held-out tracks and the stems to train."""
    if settings.data == "synth":
        stems = settings.stems or ACCOMPANIMENT
        synth = SynthSettings(stems=song_stems(stems), seconds=max(10.0, settings.seconds + 1.0),
                              sample_rate=sample_rate, soundfont=settings.soundfont)
        seed = settings.config.seed

        def songs(examples: int) -> int:
            return -(-examples // EXAMPLES_PER_SONG)

        return (SynthStemSet(seed, songs(settings.train_examples), synth),
                SynthStemSet(seed + HELD_OUT_SEED_OFFSET, songs(settings.held_out_examples), synth),
                tuple(stems))
    reader = {"slakh": (slakh_tracks, "train", "validation"),
              "musdb": (musdb_tracks, "train", "test")}.get(settings.data)
    if reader is None:
        raise ValueError(f"unknown data {settings.data!r}: use synth, slakh or musdb")
    if settings.data_dir is None:
        raise ValueError(f"--data {settings.data} needs --data-dir (a local copy; nothing is "
                         "downloaded)")
    read, train_split, held_out_split = reader
    train, held_out = read(settings.data_dir, train_split), read(settings.data_dir, held_out_split)
    if {t.track_id for t in train} == {t.track_id for t in held_out}:
        # no split folders: hold out every tenth track
        train, held_out = ([t for i, t in enumerate(train) if i % 10 != 9],
                           [t for i, t in enumerate(train) if i % 10 == 9])
    return train, held_out, data_stems(train, settings.stems)


def prepare_data(settings: FinetuneSettings, codec: tp.Any,
                 progress_factory: ProgressFactory | None = None) -> tuple[CodeSet, CodeSet]:
    """Encoded training and held-out sets: read from the run directory when it has them
    (a resumed run), else built and saved there."""
    run_dir = settings.effective_run_dir
    paths = run_dir / TRAIN_DATA_FILE, run_dir / HELD_OUT_DATA_FILE
    if all(p.is_file() for p in paths):
        return CodeSet.load(paths[0]), CodeSet.load(paths[1])
    run_dir.mkdir(parents=True, exist_ok=True)
    train_tracks, held_out_tracks, stems = _tracks(settings, int(codec.sample_rate))
    sets = []
    for tracks, count, seed, what in ((train_tracks, settings.train_examples, settings.config.seed,
                                       "training examples"),
                                      (held_out_tracks, settings.held_out_examples,
                                       settings.config.seed + 1, "held-out examples")):
        bar = progress_factory(count, what) if progress_factory else None
        examples = build_examples(tracks, stems, count, seed, settings.seconds,
                                  int(codec.sample_rate), 1, settings.tasks,
                                  progress=_advance(bar))
        sets.append(encode_examples(codec, examples))
    for codes, path in zip(sets, paths, strict=False):
        codes.save(path)
    return sets[0], sets[1]


def run_finetune(settings: FinetuneSettings, progress_factory: ProgressFactory | None = None
                 ) -> tuple[Path, TrainState]:
    """Finetune the adapters and save a model directory at `settings.output`.

    Args:
        progress_factory: `(total, description) -> tqdm-like bar`, or None.
    Returns:
        The model directory and the final training state.
    """
    from ..loader import load_model
    from ..presets import resolve_model
    from .adapter import save_adapter
    from .step import reset_adapter
    settings.config.validate()
    files = resolve_model(settings.model, settings.cache_dir)
    loaded = load_model(files, device=settings.device, dtype=torch.float32, merge_lora=False)
    run_dir = settings.effective_run_dir
    train, held_out = prepare_data(settings, loaded.codec, progress_factory)
    (run_dir / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2, default=str) + "\n")
    if settings.from_scratch:
        reset_adapter(loaded.lm, settings.config.seed)
    bar = progress_factory(settings.config.steps, "steps") if progress_factory else None
    state = finetune(loaded.lm, train, held_out, settings.config, run_dir, bar)
    if bar is not None:
        bar.close()
    hyper = {"lr": settings.config.lr, "weight_decay": settings.config.weight_decay,
             "batch_size": settings.config.batch_size, "grad_accum": settings.config.grad_accum,
             "warmup_steps": settings.config.warmup_steps, "steps": settings.config.steps,
             "base_model": settings.model}
    # Continuing the model's adapter keeps the stems it knew; a fresh one knows only the data's.
    stems = train.stem_names if settings.from_scratch else tuple(
        dict.fromkeys([*loaded.stems, *train.stem_names]))
    save_adapter(loaded.lm, files, stems, settings.output, state.step, hyper)
    return settings.output, state
