"""Slakh-like multitrack stems: procedurally composed MIDI rendered per stem with FluidSynth.

Slakh2100 is Lakh MIDI files rendered per instrument with sample-based synthesizers; this module
does the same on a small scale, offline: a seeded composer writes a short song (tempo, key,
chord progression, drum pattern, bass line, chord, arpeggio, pad and melody parts, General MIDI
programs drawn per song) with `pretty_midi`, and each stem is rendered on its own by the
`fluidsynth` command with the General MIDI soundfont (Debian `fluidsynth` and
`fluid-soundfont-gm`, installed by `make setup`). A track depends only on `(seed, index)`
and its settings: the same call gives the same samples on every run.

It knows nothing of the model or of edit tasks: `models.evaluation.examples` builds
add/remove/extract examples from any `models.evaluation.stem_sets.StemTrack`.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import typing as tp
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

if tp.TYPE_CHECKING:
    import pretty_midi

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# Each stem is levelled to this RMS (dBFS) +- STEM_LEVEL_SPREAD_DB, as a mix engineer would.
STEM_LEVEL_DBFS = -24.0
STEM_LEVEL_SPREAD_DB = 3.0
_DRUM_CHANNEL = 9
_RENDER_TIMEOUT_S = 120


class SynthesisError(RuntimeError):
    """FluidSynth or its soundfont is missing, or a render failed."""


@dataclass(frozen=True)
class StemStyle:
    """How one stem is composed: its part and the General MIDI programs it is drawn from."""

    name: str                 # the stem's name, as instructions spell it
    part: str                 # drums | bass | chords | arpeggio | pad | melody
    programs: tuple[int, ...]  # GM programs (0-based); unused for drums
    octave: int               # octave of the part's lowest notes (MIDI octave, C4 = 60)


# The release's four stems first, then stems a finetune can add. Names follow Slakh's classes
# where one fits, spelled as MUSICEDIT_STEMS keeps them (first letter upper case).
STEM_STYLES: dict[str, StemStyle] = {s.name: s for s in (
    StemStyle("Drums", "drums", (0,), 0),
    StemStyle("Bass", "bass", (32, 33, 34, 35, 36, 38), 2),
    StemStyle("Piano", "chords", (0, 1, 2, 4, 5), 4),
    StemStyle("Guitar", "arpeggio", (24, 25, 26, 27, 28, 29), 4),
    StemStyle("Strings", "pad", (40, 41, 42, 48, 49, 50), 4),
    StemStyle("Organ", "chords", (16, 17, 18, 19), 4),
    StemStyle("Brass", "melody", (56, 57, 60, 61), 4),
    StemStyle("Synth", "melody", (80, 81, 87), 5),
)}

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
# Progressions as scale degrees (0 = tonic), one chord per bar.
_PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 4, 3), (5, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 2)),
}
# Drum patterns on a 16-step bar: step lists for kick (36), snare (38), hi-hat (42/46).
_DRUM_PATTERNS = (
    {36: (0, 8), 38: (4, 12), 42: (0, 2, 4, 6, 8, 10, 12, 14)},            # rock
    {36: (0, 4, 8, 12), 38: (4, 12), 46: (2, 6, 10, 14)},                  # four on the floor
    {36: (0, 10), 38: (8,), 42: tuple(range(0, 16, 2))},                   # half time
    {36: (0, 3, 8, 11), 38: (4, 12), 42: tuple(range(16))},                # busy sixteenths
    {36: (0, 7, 8), 38: (4, 12), 51: (0, 3, 4, 6, 8, 11, 12, 14)},         # ride groove
)


@dataclass
class Song:
    """A composed song: one MIDI object per stem plus what was drawn for it."""

    tempo: float
    key: int                    # pitch class of the tonic
    mode: str                   # major | minor
    programs: dict[str, int]
    midi: dict[str, pretty_midi.PrettyMIDI] = field(repr=False)  # by stem


def _scale(key: int, mode: str) -> tuple[int, ...]:
    return tuple((key + step) % 12 for step in (_MAJOR if mode == "major" else _MINOR))


def _chord(scale: tuple[int, ...], degree: int, octave: int, size: int = 3) -> list[int]:
    """Stacked thirds on `degree` of `scale`, as MIDI pitches from `octave` up."""
    pitches: list[int] = []
    base = 12 * (octave + 1)
    for i in range(size):
        step = degree + 2 * i
        pitch = base + scale[step % 7] + 12 * (step // 7)
        while pitches and pitch <= pitches[-1]:
            pitch += 12
        pitches.append(pitch)
    return pitches


def compose(rng: np.random.Generator, stems: Sequence[str], seconds: float) -> Song:
    """Compose `seconds` of a song with one part per stem in `stems`.

    Raises:
        KeyError: a stem that `STEM_STYLES` does not define.
    """
    import pretty_midi
    styles = [STEM_STYLES[s] for s in stems]
    tempo = float(rng.integers(80, 141))
    key = int(rng.integers(12))
    mode = "major" if rng.random() < 0.6 else "minor"
    scale = _scale(key, mode)
    progression = _PROGRESSIONS[mode][rng.integers(len(_PROGRESSIONS[mode]))]
    beat = 60.0 / tempo
    bars = int(np.ceil(seconds / (4 * beat))) + 1
    programs, midi = {}, {}
    for style in styles:
        program = int(style.programs[rng.integers(len(style.programs))])
        pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
        is_drum = style.part == "drums"
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum, name=style.name)
        pan = 64 if style.part in ("drums", "bass") else int(rng.integers(24, 105))
        inst.control_changes.append(pretty_midi.ControlChange(10, pan, 0.0))
        notes = _PARTS[style.part](rng, style, scale, progression, bars, beat)
        inst.notes.extend(pretty_midi.Note(int(v), int(p), float(s), float(e))
                          for p, s, e, v in notes if s < seconds)
        pm.instruments.append(inst)
        programs[style.name], midi[style.name] = program, pm
    return Song(tempo, key, mode, programs, midi)


_Note = tuple[int, float, float, int]  # pitch, start, end, velocity


def _drums(rng: np.random.Generator, style: StemStyle, scale: tuple[int, ...],
           progression: Sequence[int], bars: int, beat: float) -> list[_Note]:
    pattern = _DRUM_PATTERNS[rng.integers(len(_DRUM_PATTERNS))]
    step = beat / 4
    notes = []
    for bar in range(bars):
        for pitch, steps in pattern.items():
            for s in steps:
                start = (bar * 16 + s) * step
                notes.append((pitch, start, start + step, int(rng.integers(70, 121))))
        if bar % 4 == 0:
            notes.append((49, bar * 16 * step, bar * 16 * step + beat, 100))  # crash
    return notes


def _bass(rng: np.random.Generator, style: StemStyle, scale: tuple[int, ...],
          progression: Sequence[int], bars: int, beat: float) -> list[_Note]:
    eighths = rng.random() < 0.5
    notes = []
    for bar in range(bars):
        root = _chord(scale, progression[bar % len(progression)], style.octave)[0]
        length = beat / 2 if eighths else beat
        for i in range(8 if eighths else 4):
            pitch = root + (7 if i % 4 == 3 and rng.random() < 0.5 else 0)
            start = bar * 4 * beat + i * length
            notes.append((pitch, start, start + 0.9 * length, int(rng.integers(85, 115))))
    return notes


def _chords(rng: np.random.Generator, style: StemStyle, scale: tuple[int, ...],
            progression: Sequence[int], bars: int, beat: float) -> list[_Note]:
    rhythm = ((0, 4),), ((0, 2), (2, 2)), ((0, 1.5), (1.5, 1), (2.5, 1.5))
    pattern = rhythm[rng.integers(len(rhythm))]
    size = 4 if rng.random() < 0.4 else 3
    notes = []
    for bar in range(bars):
        pitches = _chord(scale, progression[bar % len(progression)], style.octave, size)
        for offset, length in pattern:
            start = (bar * 4 + offset) * beat
            velocity = int(rng.integers(65, 100))
            notes += [(p, start, start + 0.95 * length * beat, velocity) for p in pitches]
    return notes


def _arpeggio(rng: np.random.Generator, style: StemStyle, scale: tuple[int, ...],
              progression: Sequence[int], bars: int, beat: float) -> list[_Note]:
    strum = rng.random() < 0.4
    notes = []
    for bar in range(bars):
        pitches = _chord(scale, progression[bar % len(progression)], style.octave, 4)
        if strum:  # a strum per beat: strings hit 15 ms apart
            for b in range(4):
                start = (bar * 4 + b) * beat
                velocity = int(rng.integers(70, 105))
                notes += [(p, start + 0.015 * i, start + 0.9 * beat, velocity)
                          for i, p in enumerate(pitches)]
        else:
            order = pitches + pitches[1:3][::-1]
            for i in range(8):
                start = (bar * 4 + i / 2) * beat
                notes.append((order[i % len(order)], start, start + 0.5 * beat,
                              int(rng.integers(70, 105))))
    return notes


def _pad(rng: np.random.Generator, style: StemStyle, scale: tuple[int, ...],
         progression: Sequence[int], bars: int, beat: float) -> list[_Note]:
    notes = []
    for bar in range(bars):
        pitches = _chord(scale, progression[bar % len(progression)], style.octave)
        start = bar * 4 * beat
        notes += [(p, start, start + 4 * beat, 80) for p in pitches]
    return notes


def _melody(rng: np.random.Generator, style: StemStyle, scale: tuple[int, ...],
            progression: Sequence[int], bars: int, beat: float) -> list[_Note]:
    notes, degree, time = [], int(rng.integers(7)), 0.0
    end = bars * 4 * beat
    while time < end:
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        if rng.random() < 0.85:  # else a rest
            pitch = 12 * (style.octave + 1) + scale[degree % 7] + 12 * (degree // 7)
            notes.append((pitch, time, time + 0.9 * length, int(rng.integers(80, 115))))
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 1, 1, 2]), 0, 9))
        time += length
    return notes


_PARTS = {"drums": _drums, "bass": _bass, "chords": _chords, "arpeggio": _arpeggio,
          "pad": _pad, "melody": _melody}


def fluidsynth_binary() -> str:
    """Path of the `fluidsynth` command.

    Raises:
        SynthesisError: it is not installed.
    """
    path = shutil.which("fluidsynth")
    if path is None:
        raise SynthesisError("the fluidsynth command is not installed: run `make setup` (it "
                             "installs the Debian packages fluidsynth and fluid-soundfont-gm)")
    return path


def render_midi(midi: pretty_midi.PrettyMIDI, sample_rate: int,
                soundfont: Path = SOUNDFONT) -> np.ndarray:
    """Render a `pretty_midi.PrettyMIDI` with FluidSynth (reverb and chorus on, as FluidSynth
    ships). Returns `[2, N]` float32 stereo at `sample_rate`, N up to the last release tail.

    Raises:
        SynthesisError: no fluidsynth or soundfont, or the render failed.
    """
    binary = fluidsynth_binary()
    if not Path(soundfont).is_file():
        raise SynthesisError(f"soundfont {soundfont} not found: run `make setup` (Debian "
                             "package fluid-soundfont-gm) or pass another General MIDI .sf2")
    with tempfile.TemporaryDirectory(prefix="musicedit-synth-") as tmp:
        mid, wav = Path(tmp) / "stem.mid", Path(tmp) / "stem.wav"
        midi.write(str(mid))
        cmd = [binary, "-ni", "-q", "-O", "float", "-T", "wav", "-r", str(sample_rate),
               "-F", str(wav), str(soundfont), str(mid)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_RENDER_TIMEOUT_S)
        if done.returncode != 0 or not wav.is_file():
            raise SynthesisError(f"fluidsynth failed ({done.returncode}): "
                                 f"{(done.stderr or done.stdout).strip()[:300]}")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise SynthesisError(f"fluidsynth wrote {rate} Hz, {sample_rate} Hz was asked for")
    return np.ascontiguousarray(data.T)


ACCOMPANIMENT = ("Drums", "Bass", "Piano", "Guitar")


def song_stems(stems: Sequence[str]) -> tuple[str, ...]:
    """The parts a song needs to give examples for `stems`: those stems, plus the release's
    four as accompaniment (an edit of a lone stem has nothing to add it to or remove it from)."""
    return tuple(dict.fromkeys([*stems, *ACCOMPANIMENT]))


@dataclass(frozen=True)
class SynthSettings:
    """What every synthesized track shares.

    Attributes:
        stems: stem names from `STEM_STYLES`; every track has all of them.
        seconds: track length.
        sample_rate: 32000 for the model, 44100 for the separation route.
        channels: 1 (mono, the mean of FluidSynth's stereo) or 2.
        soundfont: a General MIDI `.sf2`.
        workers: stems rendered at once (FluidSynth runs as separate processes).
    """

    stems: tuple[str, ...] = ACCOMPANIMENT
    seconds: float = 10.0
    sample_rate: int = 32000
    channels: int = 1
    soundfont: Path = SOUNDFONT
    workers: int = 2

    def __post_init__(self) -> None:
        unknown = [s for s in self.stems if s not in STEM_STYLES]
        if unknown or not self.stems:
            raise ValueError(f"unknown stem {unknown[0] if unknown else '(none given)'!r}: "
                             f"the synthesizer has {', '.join(STEM_STYLES)}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")


@dataclass
class SynthTrack:
    """One synthesized song: levelled stems `[C, N]` float32 whose sum is the mix."""

    track_id: str
    sample_rate: int
    stems: dict[str, np.ndarray]
    song: Song


def synthesize_track(seed: int, index: int, settings: SynthSettings | None = None) -> SynthTrack:
    """Compose and render track `index` of the set drawn from `seed`.

    Each stem is cut to `settings.seconds` and levelled to a random RMS around
    `STEM_LEVEL_DBFS`; the mix is their sum. Depends only on the arguments.
    """
    settings = settings or SynthSettings()
    rng = np.random.default_rng([seed, index])
    song = compose(rng, settings.stems, settings.seconds)
    levels = rng.uniform(-STEM_LEVEL_SPREAD_DB, STEM_LEVEL_SPREAD_DB, len(settings.stems))
    num = int(round(settings.seconds * settings.sample_rate))

    def render(stem: str) -> np.ndarray:
        return render_midi(song.midi[stem], settings.sample_rate, settings.soundfont)

    with ThreadPoolExecutor(max(1, settings.workers)) as pool:
        rendered = list(pool.map(render, settings.stems))
    stems = {}
    for name, audio, level in zip(settings.stems, rendered, levels, strict=False):
        audio = audio[:, :num]
        audio = np.pad(audio, ((0, 0), (0, num - audio.shape[1])))
        if settings.channels == 1:
            audio = audio.mean(axis=0, keepdims=True)
        rms = float(np.sqrt(np.mean(audio ** 2)))
        if rms > 0:
            audio = audio * (10 ** ((STEM_LEVEL_DBFS + level) / 20) / rms)
        stems[name] = audio.astype(np.float32)
    return SynthTrack(f"synth-{seed}-{index:05d}", settings.sample_rate, stems, song)
