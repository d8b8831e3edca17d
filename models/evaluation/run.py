"""Run edit examples through the real batched engines and score them with the paper's metrics.

`run_evaluation` is what `musicedit eval` calls: load the model through the one loader (and the
source separator, when one is named), build examples (synthesized, or from a local Slakh2100 /
MUSDB18-HQ copy), submit them all to `models.engine.EditEngine` (which batches them as it
batches users' jobs), and the remove and extract examples also to
`models.separation.SeparationEngine` (the service's other route), score the outputs
(`score_examples`) and write the report (`models.evaluation.report`).
"""
from __future__ import annotations

import logging
import time
import typing as tp
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ..sampling import SamplingParams
from . import metrics
from .examples import TASKS, EditExample, build_examples
from .pretrained import AudioTagger, ClapModelScorer
from .stem_sets import StemTrack, SynthStemSet, musdb_tracks, slakh_tracks
from .synth import SOUNDFONT, SynthSettings, song_stems

log = logging.getLogger(__name__)
METRICS = ("fad", "clap", "kl", "ssim", "si_sdr", "si_sdri")
# Synthesized songs are 10 s; each gives examples for this many (task, stem) draws.
EXAMPLES_PER_SONG = 3
SONG_SECONDS = 10.0


@dataclass
class EvalSettings:
    """What `musicedit eval` runs.

    Attributes:
        data: `synth`, `slakh` or `musdb`; the last two read `data_dir`.
        stems: stems to edit (default: every stem the model knows that the data has).
        sample_rate, channels: the examples' audio (the engine resamples and mixes down).
        clap_model, kl_model: local directories of the pretrained metric models, or None to
            skip the metrics that need them.
        separator: `none`, or the source separator whose route is also measured on the
            remove and extract examples (a preset such as `htdemucs_6s`, or a Demucs file).
    """

    model: str = "tiny"
    separator: str = "none"
    cache_dir: Path = Path("var/models")
    device: str = "cpu"
    examples: int = 50
    seconds: float = 5.0
    seed: int = 0
    data: str = "synth"
    data_dir: Path | None = None
    split: str = "test"
    stems: tuple[str, ...] | None = None
    tasks: tuple[str, ...] = TASKS
    sample_rate: int = 32000
    channels: int = 1
    batch_size: int = 8
    sampling: SamplingParams = SamplingParams()
    clap_model: Path | None = None
    kl_model: Path | None = None
    soundfont: Path = SOUNDFONT
    output: Path = Path("var/eval")


@dataclass
class ExampleScore:
    example_id: str
    task: str
    stem: str
    si_sdr: float
    si_sdri: float
    ssim: float
    clap: float | None = None
    kl: float | None = None
    engine: str = "generative"  # or "separation"


@dataclass
class EvalReport:
    """Scores of one run: per task (Table 2's rows), per task and stem, per example.

    `tasks` and `per_stem` are the generative route (Instruct-MusicGen, what Table 2 measures);
    `separation` and `separation_per_stem` the separator's route on the remove and extract
    examples of the stems it knows (empty without a separator).
    """

    model: str
    created: str
    settings: dict
    tasks: dict[str, dict[str, float | None]]
    per_stem: dict[str, dict[str, dict[str, float | None]]]
    examples: list[ExampleScore]
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    separation: dict[str, dict[str, float | None]] = field(default_factory=dict)
    separation_per_stem: dict[str, dict[str, dict[str, float | None]]] = field(
        default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class Progress(tp.Protocol):
    def update(self, n: int = 1) -> object: ...


def load_tracks(settings: EvalSettings, stems: tp.Sequence[str]) -> tp.Sequence[StemTrack]:
    """The tracks examples are drawn from (synthesized songs are rendered on first use)."""
    if settings.data == "synth":
        songs = -(-settings.examples // EXAMPLES_PER_SONG)
        return SynthStemSet(settings.seed, songs, SynthSettings(
            stems=song_stems(stems), seconds=max(SONG_SECONDS, settings.seconds + 1.0),
            sample_rate=settings.sample_rate, channels=settings.channels,
            soundfont=settings.soundfont))
    if settings.data_dir is None:
        raise ValueError(f"--data {settings.data} needs --data-dir (a local copy; nothing is "
                         "downloaded)")
    reader = {"slakh": slakh_tracks, "musdb": musdb_tracks}.get(settings.data)
    if reader is None:
        raise ValueError(f"unknown data {settings.data!r}: use synth, slakh or musdb")
    return reader(settings.data_dir, settings.split)


def _run_all(engine: tp.Any, examples: tp.Sequence[EditExample], handles: list[tp.Any],
             route: str, progress: Progress | None) -> list[tuple[np.ndarray, int]]:
    """Drive `engine` with `step()` until every handle is done; each output's audio and rate.

    Raises:
        RuntimeError: an example failed (its id, the route and the cause).
    """
    pending = set(range(len(handles)))
    while pending:
        engine.step()
        finished = {i for i in pending if handles[i].done()}
        pending -= finished
        if progress is not None and finished:
            progress.update(len(finished))
    outputs = []
    for ex, handle in zip(examples, handles, strict=True):
        try:
            out = handle.result()
        except Exception as exc:
            raise RuntimeError(f"example {ex.example_id} failed on the {route}: {exc}") from exc
        outputs.append((out.audio.cpu().numpy(), out.sample_rate))
    return outputs


def edit_examples(engine: tp.Any, examples: tp.Sequence[EditExample], sampling: SamplingParams,
                  progress: Progress | None = None) -> list[tuple[np.ndarray, int]]:
    """Edit every example with `engine` (all submitted at once; the engine batches them).

    Example i samples with seed `sampling.seed + i`. Drives the engine with `step()`.

    Returns:
        per example, the edited audio `[1, N]` float32 and its rate (the codec's).
    Raises:
        RuntimeError: an example's edit failed (its id and the cause).
    """
    from ..engine import EditRequest
    handles = [engine.submit(EditRequest(ex.example_id, ex.input, ex.sample_rate, ex.instruction,
                                         replace(sampling, seed=sampling.seed + i)))
               for i, ex in enumerate(examples)]
    return _run_all(engine, examples, handles, "generative model", progress)


def separate_examples(engine: tp.Any, examples: tp.Sequence[EditExample],
                      progress: Progress | None = None) -> list[tuple[np.ndarray, int]]:
    """Remove or extract every example's stem with the separation `engine` (all submitted at
    once; the engine batches their segments). Drives the engine with `step()`.

    Returns:
        per example, the result `[C, N]` float32 at the example's rate and channels.
    Raises:
        RuntimeError: an example's separation failed (its id and the cause).
    """
    from ..separation import SeparationRequest, StemEdit, StemOperation
    handles = [engine.submit(SeparationRequest(
        ex.example_id, ex.input, ex.sample_rate,
        (StemEdit(tp.cast(StemOperation, ex.task), ex.stem),)))
        for ex in examples]
    return _run_all(engine, examples, handles, "separator", progress)


def _mean(values: tp.Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# Per-metric means of a group of examples (None: the metric did not run).
Means = dict[str, float | None]
# `(total, description) -> progress bar` (tqdm's `update(n)`), for long loops.
ProgressFactory = tp.Callable[[int, str], tp.Any]


def score_examples(examples: tp.Sequence[EditExample],
                   predictions: tp.Sequence[tuple[np.ndarray, int]],
                   clap: ClapModelScorer | None = None, tagger: AudioTagger | None = None,
                   engine: str = "generative",
                   ) -> tuple[list[ExampleScore], dict[str, float | None], dict[str, str]]:
    """Per-example scores, FAD per task, and the metrics that were skipped with why.

    Args:
        predictions: per example, `(audio [C, N], rate)`.
        engine: the route that made the predictions, recorded with each score.
    Returns:
        (per-example scores, {task: FAD or None}, {metric: reason skipped}); all empty
        when there are no examples.
    """
    if not examples:
        return [], {}, {}
    scores = []
    for ex, (audio, rate) in zip(examples, predictions, strict=False):
        pred = metrics.to_metric_audio(audio, rate)
        target = metrics.to_metric_audio(ex.target, ex.sample_rate)
        mixture = metrics.to_metric_audio(ex.input, ex.sample_rate)
        scores.append(ExampleScore(
            ex.example_id, ex.task, ex.stem, metrics.si_sdr(pred, target),
            metrics.si_sdr_improvement(pred, target, mixture), metrics.mel_ssim(pred, target),
            engine=engine))
    skipped: dict[str, str] = {}
    fad: dict[str, float | None] = {task: None for task in {ex.task for ex in examples}}
    targets = [(ex.target, ex.sample_rate) for ex in examples]
    if clap is None:
        reason = ("no --clap-model given (a local transformers CLAP directory, e.g. a copy of "
                  "laion/larger_clap_music; nothing is downloaded)")
        skipped["fad"] = skipped["clap"] = reason
    else:
        pred_emb = clap.audio_embeddings(predictions)
        target_emb = clap.audio_embeddings(targets)
        text_emb = clap.text_embeddings([ex.caption for ex in examples])
        similarities = metrics.cosine_similarity(pred_emb, text_emb).tolist()
        for score, value in zip(scores, similarities, strict=True):
            score.clap = value
        for task in fad:
            rows = [i for i, ex in enumerate(examples) if ex.task == task]
            if len(rows) >= 2:
                fad[task] = metrics.frechet_distance(pred_emb[rows].numpy(),
                                                     target_emb[rows].numpy())
            else:
                skipped[f"fad:{task}"] = "FAD needs at least 2 examples of the task"
    if tagger is None:
        skipped["kl"] = ("no --kl-model given (a local transformers AudioSet classifier, e.g. a "
                         "copy of MIT/ast-finetuned-audioset-10-10-0.4593; nothing is downloaded)")
    else:
        kl = metrics.kl_divergence(tagger.logits(predictions), tagger.logits(targets))
        for score, value in zip(scores, kl.tolist(), strict=False):
            score.kl = value
    return scores, fad, skipped


def aggregate(scores: tp.Sequence[ExampleScore], fad: dict[str, float | None]
              ) -> tuple[dict[str, Means], dict[str, dict[str, Means]]]:
    """Means per task (with FAD) and per task and stem (with the example count `n`)."""
    by_task: dict[str, list[ExampleScore]] = defaultdict(list)
    by_stem: dict[str, dict[str, list[ExampleScore]]] = defaultdict(lambda: defaultdict(list))
    for s in scores:
        by_task[s.task].append(s)
        by_stem[s.task][s.stem].append(s)

    def means(group: list[ExampleScore]) -> dict[str, float | None]:
        return {m: _mean(getattr(s, m) for s in group) for m in METRICS if m != "fad"}

    tasks = {t: {"fad": fad.get(t), **means(g), "n": float(len(g))}
             for t in TASKS if (g := by_task.get(t))}
    per_stem = {t: {stem: {**means(g), "n": float(len(g))} for stem, g in stems.items()}
                for t, stems in by_stem.items()}
    return tasks, per_stem


def run_evaluation(settings: EvalSettings, progress_factory: ProgressFactory | None = None
                   ) -> tuple[EvalReport, dict[str, Path]]:
    """Load the model, build and edit the examples, score them and write the report.

    Args:
        progress_factory: `(total, description) -> progress bar` (tqdm), or None.
    Returns:
        The report and the paths written (`results.md`, `results.json`, `results.png`).
    """
    from ..engine import EditEngine, EngineConfig
    from ..loader import load_model
    from ..presets import resolve_model
    from ..separation import (
        OPERATIONS,
        SeparationConfig,
        SeparationEngine,
        load_separator,
        resolve_separator,
    )
    from .report import write_report
    timings: dict[str, float] = {}
    started = time.perf_counter()
    files = resolve_model(settings.model, settings.cache_dir)
    model = load_model(files, device=settings.device)
    separator = None
    if settings.separator.lower() != "none":
        separator = load_separator(resolve_separator(settings.separator, settings.cache_dir),
                                   device=settings.device)
    timings["load_seconds"] = time.perf_counter() - started
    stems = settings.stems or model.stems
    separator_stems = separator.stems if separator is not None else ()
    unknown = [s for s in stems if s not in model.stems and s not in separator_stems]
    if unknown:
        also = (f", and separator {settings.separator!r} separates "
                f"{', '.join(separator_stems)}" if separator is not None else "")
        raise ValueError(f"the model was not trained on {', '.join(unknown)}; its stems are "
                         f"{', '.join(model.stems)}{also}")
    # Load the metric models before the long part, so a bad path fails in seconds.
    clap = ClapModelScorer(settings.clap_model, settings.device) if settings.clap_model else None
    tagger = AudioTagger(settings.kl_model, settings.device) if settings.kl_model else None

    def bar(total: int, what: str) -> Progress | None:
        return progress_factory(total, what) if progress_factory else None

    t = time.perf_counter()
    tracks = load_tracks(settings, stems)
    examples_bar = bar(settings.examples, "examples")
    examples = build_examples(tracks, stems, settings.examples, settings.seed, settings.seconds,
                              settings.sample_rate, settings.channels, settings.tasks,
                              progress=(lambda _: examples_bar.update(1)) if examples_bar else None)
    timings["examples_seconds"] = time.perf_counter() - t
    # The generative route edits the stems the model knows; the separator removes and
    # extracts the stems it knows (the same examples, where both know the stem).
    generative = [ex for ex in examples if ex.stem in model.stems]
    separated = [ex for ex in examples if ex.task in OPERATIONS and ex.stem in separator_stems]
    t = time.perf_counter()
    predictions: list[tuple[np.ndarray, int]] = []
    if generative:
        engine = EditEngine(model, EngineConfig(max_batch_size=settings.batch_size,
                                                max_input_seconds=max(settings.seconds, 5.0)))
        predictions = edit_examples(engine, generative, settings.sampling,
                                    bar(len(generative), "edits"))
    timings["edit_seconds"] = time.perf_counter() - t
    separations: list[tuple[np.ndarray, int]] = []
    if separator is not None and separated:
        t = time.perf_counter()
        separation_engine = SeparationEngine(separator, SeparationConfig(
            max_input_seconds=max(settings.seconds, 5.0)))
        separations = separate_examples(separation_engine, separated,
                                        bar(len(separated), "separations"))
        timings["separation_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    scores, fad, skipped = score_examples(generative, predictions, clap, tagger)
    separation_scores, separation_fad, separation_skipped = score_examples(
        separated, separations, clap, tagger, engine="separation")
    for key, reason in separation_skipped.items():
        skipped.setdefault(key if ":" not in key else f"{key} (separation)", reason)
    timings["score_seconds"] = time.perf_counter() - t
    tasks, per_stem = aggregate(scores, fad)
    separation_tasks, separation_per_stem = aggregate(separation_scores, separation_fad)
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    recorded["stems"] = list(stems)
    recorded["separator_stems"] = [s for s in stems if s in separator_stems]
    recorded["device_name"] = (torch.cuda.get_device_name(model.device)
                               if model.device.type == "cuda" else "cpu")
    report = EvalReport(settings.model, datetime.now(UTC).isoformat(timespec="seconds"),
                        recorded, tasks, per_stem, scores + separation_scores, skipped, timings,
                        separation_tasks, separation_per_stem)
    return report, write_report(report, settings.output)
