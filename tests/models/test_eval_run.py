"""`musicedit eval` end to end: synthesized examples, the real loader and batched engine with the
tiny preset, the paper's metrics, tiny pretrained metric models read from disk."""
from __future__ import annotations

import json

import pytest
from metric_models import write_tiny_audio_tagger, write_tiny_clap

from cli.main import main

METRIC_KEYS = {"fad", "clap", "kl", "ssim", "si_sdr", "si_sdri"}


def _run(*argv: str) -> int:
    """`musicedit eval ...` through the installed entry point's `main`."""
    return main(["eval", *argv])


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric-models")
    return write_tiny_clap(root / "clap"), write_tiny_audio_tagger(root / "tagger")


def test_eval_writes_a_table_2_shaped_report(tiny_files, model_cache, metric_models, tmp_path,
                                             capsys):
    clap, tagger = metric_models
    out = tmp_path / "report"
    assert _run("--model", "tiny", "--cache-dir", str(model_cache), "--device", "cpu",
                "--examples", "6", "--seconds", "2", "--stems", "drums,bass",
                "--clap-model", str(clap), "--kl-model", str(tagger), "--output", str(out),
                "--separator", "tiny") == 0
    printed = capsys.readouterr()
    assert "| Remove | this run | 2 |" in printed.out
    assert "edits: 100%" in printed.err  # the progress bar
    report = json.loads((out / "results.json").read_text())
    assert set(report["tasks"]) == {"add", "remove", "extract"}
    for task, row in report["tasks"].items():
        assert row["n"] == 2
        assert all(row[key] is not None for key in METRIC_KEYS), (task, row)
        assert -1.0 <= row["clap"] <= 1.0 and row["kl"] >= 0 and row["fad"] >= 0
    assert report["skipped"] == {}
    for task, row in report["separation"].items():  # the separator's rows get every metric
        assert all(row[key] is not None for key in METRIC_KEYS), (task, row)
    assert report["paper"]["table"]["remove"]["si_sdri"] == -3.77
    assert {e["stem"] for e in report["examples"]} == {"Drums", "Bass"}
    assert report["settings"]["stems"] == ["Drums", "Bass"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert "paper (arXiv:2405.18386, Table 2)" in markdown and "## By stem" in markdown


def test_eval_says_which_metrics_it_skipped_and_why(tiny_files, model_cache, tmp_path, capsys):
    out = tmp_path / "report"
    assert _run("--model", "tiny", "--cache-dir", str(model_cache), "--device", "cpu",
                "--examples", "3", "--seconds", "2", "--stems", "Guitar", "--sample-rate",
                "44100", "--channels", "2", "--output", str(out)) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["skipped"]) == {"fad", "clap", "kl"}
    assert "no --clap-model given" in report["skipped"]["clap"]
    assert "no --kl-model given" in report["skipped"]["kl"]
    row = report["tasks"]["extract"]
    assert row["fad"] is None and row["clap"] is None and row["kl"] is None
    assert row["ssim"] is not None and row["si_sdri"] is not None
    assert report["settings"]["sample_rate"] == 44100 and report["settings"]["channels"] == 2
    assert "Skipped metrics" in capsys.readouterr().out


def test_eval_refuses_what_it_cannot_run(tiny_files, model_cache, tmp_path, capsys):
    base = ["--model", "tiny", "--cache-dir", str(model_cache), "--device", "cpu",
            "--output", str(tmp_path)]
    assert _run(*base, "--clap-model", "laion/larger_clap_music") == 2
    assert "not a local directory" in capsys.readouterr().err
    assert _run(*base, "--stems", "Vocals") == 2
    assert "not trained on Vocals" in capsys.readouterr().err
    assert _run(*base, "--data", "slakh") == 2
    assert "needs --data-dir" in capsys.readouterr().err
    assert _run(*base, "--stems", "Strings", "--separator", "tiny") == 2
    assert "and separator 'tiny' separates Drums, Bass" in capsys.readouterr().err


def test_eval_scores_the_separation_route_on_the_same_examples(tiny_files, model_cache,
                                                               tmp_path, capsys):
    out = tmp_path / "report"
    assert _run("--model", "tiny", "--separator", "tiny", "--cache-dir", str(model_cache),
                "--device", "cpu", "--examples", "6", "--seconds", "2", "--stems", "Drums,Bass",
                "--output", str(out)) == 0
    printed = capsys.readouterr()
    assert "separations: 100%" in printed.err
    report = json.loads((out / "results.json").read_text())
    assert set(report["tasks"]) == {"add", "remove", "extract"}
    assert set(report["separation"]) == {"remove", "extract"}
    assert report["settings"]["separator"] == "tiny"
    assert report["settings"]["separator_stems"] == ["Drums", "Bass"]
    by_engine = {(e["engine"], e["task"], e["example_id"]) for e in report["examples"]}
    generative = {(task, i) for engine, task, i in by_engine if engine == "generative"}
    separated = {(task, i) for engine, task, i in by_engine if engine == "separation"}
    # the separator edits exactly the generative route's remove and extract examples
    assert separated == {(task, i) for task, i in generative if task != "add"}
    for task, row in report["separation"].items():
        assert row["n"] == 2 and row["ssim"] is not None and row["si_sdri"] is not None, task
    assert report["separation_per_stem"]["remove"].keys() == {"Drums", "Bass"}
    assert "separation_seconds" in report["timings"]
    markdown = (out / "results.md").read_text()
    assert "| | this run, separator `tiny` | 2 |" in markdown
    assert "| remove (separator) | Bass | 1 |" in markdown
    assert "4 on the separator `tiny`" in markdown
