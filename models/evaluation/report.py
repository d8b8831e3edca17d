"""The evaluation report: a table shaped like the paper's Table 2, as Markdown, JSON and a plot.

`PAPER_TABLE2` holds Instruct-MusicGen's published scores on Slakh2100 (4 stems) for
comparison: Zhang et al., "Instruct-MusicGen: Unlocking Text-to-Music Editing for Music Language
Models via Instruction Tuning", arXiv:2405.18386, Table 2. The values are the full model's row
("w. text fusion") of its Table 4, which repeats every Table 2 value the text quotes (section
4.6: removal FAD 3.35, SSIM 0.45, SI-SDRi -3.77; extraction FAD 3.24, SSIM 0.52, SI-SDR -9.00,
SI-SDRi -6.15). The paper reports no SI-SDR for adding a stem.

When a source separator was evaluated too, its remove and extract rows stand under the
generative model's and the paper's, scored on the same examples.
"""
from __future__ import annotations

import json
import typing as tp
from pathlib import Path

PAPER_TABLE2: dict[str, dict[str, float | None]] = {
    "add": {"fad": 3.75, "clap": 0.23, "kl": 0.67, "ssim": 0.26, "si_sdr": None, "si_sdri": None},
    "remove": {"fad": 3.35, "clap": 0.12, "kl": 0.66, "ssim": 0.45, "si_sdr": -2.09,
               "si_sdri": -3.77},
    "extract": {"fad": 3.24, "clap": 0.12, "kl": 0.54, "ssim": 0.52, "si_sdr": -9.00,
                "si_sdri": -6.15},
}
COLUMNS = (("fad", "FAD ↓"), ("clap", "CLAP ↑"), ("kl", "KL ↓"), ("ssim", "SSIM ↑"),
           ("si_sdr", "SI-SDR ↑"), ("si_sdri", "SI-SDRi ↑"))
PAPER_SOURCE = "paper (arXiv:2405.18386, Table 2)"
FILES = {"markdown": "results.md", "json": "results.json", "plot": "results.png"}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(report: tp.Any) -> str:
    """The report as Markdown: the Table 2 shaped table (this run and the paper), what was
    skipped and why, and the per-stem breakdown."""
    s = report.settings
    separator = s.get("separator", "none")
    separation = report.separation
    generative_n = sum(int(v["n"]) for v in report.tasks.values())
    separation_n = sum(int(v["n"]) for v in separation.values())
    routes = f"{generative_n} edits on the generative model"
    if separation_n:
        routes += f", {separation_n} on the separator `{separator}`"
    lines = [
        f"# Edit quality of `{report.model}`",
        "",
        f"{routes} ({s['data']} data, {s['seconds']:g} s, seed {s['seed']}, stems "
        f"{', '.join(s['stems'])}) on {s['device_name']}, {report.created}.",
        "",
        "| Task | Source | n | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---|---|---:|" + "---:|" * len(COLUMNS),
    ]

    def row_line(task: str, source: str, row: dict[str, float | None], n: str) -> str:
        cells = [task, source, n, *(_cell(row.get(key)) for key, _ in COLUMNS)]
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    for task in [t for t in PAPER_TABLE2 if t in report.tasks or t in separation]:
        label = task.capitalize()
        if task in report.tasks:
            row = report.tasks[task]
            lines.append(row_line(label, "this run", row, str(int(row["n"] or 0))))
            label = ""
        lines.append(row_line(label, PAPER_SOURCE, PAPER_TABLE2[task], ""))
        if task in separation:
            row = separation[task]
            lines.append(row_line("", f"this run, separator `{separator}`", row,
                                  str(int(row["n"] or 0))))
    lines.append("")
    if report.skipped:
        lines.append("Skipped metrics (shown as –):")
        lines += [f"- {metric.upper()}: {reason}"
                  for metric, reason in sorted(report.skipped.items())]
        lines.append("")
    lines.append("FAD here uses the CLAP model's audio embeddings and KL the given AudioSet "
                 "classifier; the paper used VGGish and PANNs (audioldm_eval), so those two "
                 "columns compare runs of this harness, not the paper's scale.")
    lines += ["", "## By stem", "",
              "| Task | Stem | n | SSIM ↑ | SI-SDR ↑ | SI-SDRi ↑ | CLAP ↑ | KL ↓ |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    by_route = [("", report.per_stem),
                (" (separator)", report.separation_per_stem)]
    for suffix, per_stem in by_route:
        for task, stems in per_stem.items():
            for stem, row in sorted(stems.items()):
                lines.append(f"| {task}{suffix} | {stem} | {int(row['n'] or 0)} | " + " | ".join(
                    _cell(row.get(k)) for k in ("ssim", "si_sdr", "si_sdri", "clap", "kl"))
                    + " |")
    return "\n".join(lines) + "\n"


def plot(report: tp.Any, path: Path) -> None:
    """One panel per metric: this run's value per task as bars, the paper's as markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    separation = report.separation
    tasks = [t for t in PAPER_TABLE2 if t in report.tasks or t in separation]
    width = 0.4 if separation else 0.8
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, (key, name) in zip(axes.flat, COLUMNS, strict=False):
        measured = [report.tasks.get(t, {}).get(key) for t in tasks]
        separated = [separation.get(t, {}).get(key) for t in tasks]
        paper = [PAPER_TABLE2[t][key] for t in tasks]
        xs = range(len(tasks))
        shift = -width / 2 if separation else 0.0
        ax.bar([x + shift for x in xs], [0 if v is None else v for v in measured], width,
               color="tab:blue", label="this run, generative")
        if separation:
            ax.bar([x + width / 2 for x in xs], [0 if v is None else v for v in separated],
                   width, color="tab:green", label="this run, separator")
        ax.scatter([x for x, v in zip(xs, paper, strict=False) if v is not None],
                   [v for v in paper if v is not None], color="tab:red", marker="D",
                   zorder=3, label="paper")
        ax.set_xticks(list(xs), [t.capitalize() for t in tasks])
        ax.axhline(0, color="black", linewidth=0.5)
        skipped = all(v is None for v in measured + separated)
        ax.set_title(name + (" (skipped)" if skipped else ""))
    axes.flat[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Edit quality of {report.model} ({report.created})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: tp.Any, directory: Path) -> dict[str, Path]:
    """Write `results.md`, `results.json` and `results.png` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / name for kind, name in FILES.items()}
    paths["markdown"].write_text(markdown(report))
    body = report.to_json()
    body["paper"] = {"source": PAPER_SOURCE, "table": PAPER_TABLE2}
    paths["json"].write_text(json.dumps(body, indent=2) + "\n")
    plot(report, paths["plot"])
    return paths
