"""Stems synthesized with the real FluidSynth, real stem-set layouts, and edit examples."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import yaml

from models.evaluation.examples import NoExamples, build_examples, make_example
from models.evaluation.stem_sets import (
    ArrayTrack,
    StemSetError,
    SynthStemSet,
    musdb_tracks,
    slakh_tracks,
    stem_name,
)
from models.evaluation.synth import SynthesisError, SynthSettings, synthesize_track

SHORT = SynthSettings(seconds=4.0)


@pytest.fixture(scope="module")
def song():
    return synthesize_track(3, 0, SHORT)


def test_a_track_is_the_same_for_the_same_seed_and_differs_across_seeds(song):
    again = synthesize_track(3, 0, SHORT)
    for stem in SHORT.stems:
        np.testing.assert_array_equal(song.stems[stem], again.stems[stem])
    other = synthesize_track(4, 0, SHORT)
    assert not np.allclose(song.stems["Bass"], other.stems["Bass"])


def test_every_stem_is_audible_at_its_level(song):
    assert list(song.stems) == ["Drums", "Bass", "Piano", "Guitar"]
    for stem, audio in song.stems.items():
        assert audio.shape == (1, 4 * 32000) and audio.dtype == np.float32
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio ** 2)))
        assert -28 < rms_db < -20, stem
    assert 80 <= song.song.tempo <= 140 and song.song.mode in ("major", "minor")


def test_stereo_44k_for_the_separation_route():
    track = synthesize_track(3, 0, SynthSettings(seconds=2.0, sample_rate=44100, channels=2,
                                                 stems=("Drums", "Strings")))
    assert track.stems["Strings"].shape == (2, 88200)
    left, right = track.stems["Strings"]
    assert not np.allclose(left, right)  # panned: really two channels


def test_missing_soundfont_says_how_to_install_it(tmp_path):
    with pytest.raises(SynthesisError, match="make setup"):
        synthesize_track(0, 0, SynthSettings(seconds=1.0, soundfont=tmp_path / "none.sf2"))
    with pytest.raises(ValueError, match="the synthesizer has Drums, Bass"):
        SynthSettings(stems=("Kazoo",))


def test_examples_follow_the_instruction_pipeline(song):
    track = ArrayTrack(song.track_id, song.sample_rate, song.stems)
    rng = np.random.default_rng(0)
    for task in ("add", "remove", "extract"):
        ex = make_example(track, task, "Bass", rng, 2.0, 32000, 1, "x")
        assert ex is not None and ex.input.shape == ex.target.shape == (1, 64000)
        assert max(np.abs(ex.input).max(), np.abs(ex.target).max()) == pytest.approx(0.9)
        bass = track.read("Bass", ex.offset, 2.0, 32000, 1)
        if task == "add":
            assert ex.instruction == "Music piece. Instruct: Add Bass."
            assert "Bass" in ex.target_stems
            added = ex.target - ex.input
        elif task == "remove":
            assert ex.instruction == "Music piece. Instruct: No Bass."
            assert "Bass" not in ex.target_stems
            added = ex.input - ex.target
        else:
            assert ex.instruction == "Music piece. Instruct: Only Bass."
            assert ex.target_stems == ("Bass",) and ex.caption == "Bass music"
            added = ex.target
        # the difference between input and target is exactly the stem, at the example's gain
        scale = float(np.dot(added[0], bass[0]) / np.dot(bass[0], bass[0]))
        np.testing.assert_allclose(added, bass * scale, atol=1e-5)
        assert scale > 0


def test_examples_are_balanced_and_deterministic():
    tracks = SynthStemSet(5, 3, SHORT)
    first = build_examples(tracks, ["Drums", "Guitar"], 6, seed=1, seconds=2.0)
    assert [(e.task, e.stem) for e in first] == [
        ("add", "Drums"), ("remove", "Drums"), ("extract", "Drums"),
        ("add", "Guitar"), ("remove", "Guitar"), ("extract", "Guitar")]
    again = build_examples(SynthStemSet(5, 3, SHORT), ["Drums", "Guitar"], 6, seed=1, seconds=2.0)
    for a, b in zip(first, again, strict=False):
        np.testing.assert_array_equal(a.input, b.input)
    with pytest.raises(NoExamples, match="'Vocals'"):
        build_examples(tracks, ["Vocals"], 1, seconds=2.0)


def test_a_synthesized_set_is_a_sequence_of_its_songs():
    tracks = SynthStemSet(5, 2, SHORT)
    assert len(tracks) == tracks.size == 2
    last = tracks[-1]
    assert last is tracks[1] and last.track_id == "synth-5-00001"
    assert [t.track_id for t in tracks[:]] == ["synth-5-00000", "synth-5-00001"]
    # Sequence's own methods still work (no attribute shadows them)
    assert tracks.count(last) == 1 and tracks.index(last) == 1
    with pytest.raises(IndexError):
        tracks[2]


def _write(path, audio, rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, rate)


def test_slakh_layout_groups_stems_by_class(song, tmp_path):
    """A Slakh2100 track: metadata.yaml names each SNN stem's class; two guitar stems are one
    Guitar stem; an unrendered stem is skipped."""
    track_dir = tmp_path / "test" / "Track00001"
    stems = {"S00": ("Guitar", "Guitar"), "S01": ("Guitar", "Piano"), "S02": ("Bass", "Bass"),
             "S03": ("Strings (continued)", "Drums"), "S04": ("Synth Pad", None)}
    meta = {"stems": {}}
    for stem_id, (inst_class, source) in stems.items():
        meta["stems"][stem_id] = {"inst_class": inst_class, "audio_rendered": source is not None,
                                  "program_num": 0, "is_drum": False}
        if source is not None:
            stereo = np.repeat(song.stems[source], 2, axis=0)
            _write(track_dir / "stems" / f"{stem_id}.flac", stereo, 44100)
    (track_dir / "metadata.yaml").write_text(yaml.safe_dump(meta))
    [track] = slakh_tracks(tmp_path, "test")
    assert track.stem_names == ("Guitar", "Bass", "Strings")
    guitar = track.read("Guitar", 0.5, 1.0, 44100, 2)
    expected = np.repeat(song.stems["Guitar"] + song.stems["Piano"], 2, axis=0)
    np.testing.assert_allclose(guitar, expected[:, 22050:66150], atol=1e-4)
    assert track.read("Bass", 0.0, 1.0, 32000, 1).shape == (1, 32000)
    with pytest.raises(StemSetError, match="never downloaded"):
        slakh_tracks(tmp_path / "absent")
    with pytest.raises(StemSetError, match="metadata.yaml"):
        slakh_tracks(tmp_path / "test" / "Track00001" / "stems")


def test_musdb_layout(song, tmp_path):
    folder = tmp_path / "train" / "Artist - Song"
    for name, source in (("drums", "Drums"), ("bass", "Bass"), ("other", "Piano"),
                         ("vocals", "Guitar")):
        _write(folder / f"{name}.wav", np.repeat(song.stems[source], 2, axis=0), 32000)
    [track] = musdb_tracks(tmp_path, "train")
    assert track.stem_names == ("Drums", "Bass", "Other", "Vocals")
    assert track.seconds == pytest.approx(4.0)
    with pytest.raises(StemSetError, match="MUSDB18-HQ"):
        musdb_tracks(tmp_path, "test")  # no such split: the root itself has no tracks


def test_stem_names_are_spelled_as_the_service_keeps_them():
    assert stem_name("Synth Pad") == "Synth pad"
    assert stem_name("drums") == "Drums"
    assert stem_name("Strings (continued)") == "Strings"
