"""Plot load-test runs: submit latency, throughput and queue depth over time (one column per run).

    python -m bench.loadtest.plot var/loadtest/gateway-100 var/loadtest/mixed -o docs/loadtest.png

Each run directory holds the `requests.csv` and `timeseries.csv` written by `run_async`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.loadtest.common import percentile  # noqa: E402


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _binned(records: list[dict[str, str]], value: str, end: float, width: int):
    """Per `width`-second bin of the answer time (start + `value`): answers per second, and
    p50 and p99 of `value`."""
    bins: dict[int, list[float]] = {}
    for record in records:
        v = float(record[value])
        if not math.isnan(v):
            bins.setdefault(int((float(record["started"]) + v) // width), []).append(v)
    keys = list(range(int(end // width) + 1))
    return ([k * width for k in keys], [len(bins.get(k, [])) / width for k in keys],
            [percentile(bins.get(k, []), 50) for k in keys],
            [percentile(bins.get(k, []), 99) for k in keys])


def plot(runs: list[Path], output: Path) -> None:
    fig, axes = plt.subplots(3, len(runs), figsize=(5.2 * len(runs), 7.2), squeeze=False,
                             sharex="col")
    for column, run in enumerate(runs):
        records = _read(run / "requests.csv")
        series = _read(run / "timeseries.csv")
        summary = json.loads((run / "summary.json").read_text())
        end = max([float(s["t"]) for s in series]
                  + [float(r["started"]) + float(r["submit_seconds"]) for r in records
                     if not math.isnan(float(r["submit_seconds"]))] + [1.0])
        # 1-s bins at high rates; 10-s bins smooth the sparse low-rate end-to-end runs
        width = 1 if summary["target_rate_per_s"] >= 5 else 10
        xs, accepted, p50, p99 = _binned(
            [r for r in records if r["submit_status"] == "202"], "submit_seconds", end, width)
        title = (f"{run.name}: {summary['scenario']}, target {summary['target_rate_per_s']:g}/s")
        top, middle, bottom = axes[0][column], axes[1][column], axes[2][column]
        top.set_title(title, fontsize=9)
        top.plot(xs, [v * 1000 for v in p50], label="submit p50", lw=1)
        top.plot(xs, [v * 1000 for v in p99], label="submit p99", lw=1)
        done = [r for r in records if not math.isnan(float(r["end_to_end_seconds"]))]
        if done:
            twin = top.twinx()
            twin.scatter([float(r["started"]) for r in done],
                         [float(r["end_to_end_seconds"]) for r in done], s=6, c="tab:green",
                         label="end-to-end (s, right)")
            twin.set_ylabel("end-to-end (s)", fontsize=8)
            twin.legend(loc="upper right", fontsize=7)
        top.set_ylabel("submit latency (ms)", fontsize=8)
        top.legend(loc="upper left", fontsize=7)
        middle.plot(xs, accepted, lw=1, label="accepted uploads/s")
        errors = [0.0] * len(xs)
        for record in records:
            if record["error"]:
                index = int(float(record["started"]) // width)
                if index < len(errors):
                    errors[index] += 1 / width
        middle.plot(xs, errors, lw=1, c="tab:red", label="errors/s")
        if done:
            finished = [0.0] * len(xs)
            for record in done:
                index = int((float(record["started"]) + float(record["end_to_end_seconds"]))
                            // width)
                if index < len(finished):
                    finished[index] += 1 / width
            middle.plot(xs, finished, lw=1, c="tab:green", label="results downloaded/s")
        middle.set_ylabel("per second", fontsize=8)
        middle.legend(loc="upper left", fontsize=7)
        ts = [float(s["t"]) for s in series if s["queue_depth"]]
        depth = [float(s["queue_depth"]) for s in series if s["queue_depth"]]
        bottom.plot(ts, depth, lw=1, c="tab:purple", label="queue depth (/metrics)")
        bottom.set_ylabel("queued jobs", fontsize=8)
        bottom.set_xlabel("seconds since start", fontsize=8)
        bottom.legend(loc="upper left", fontsize=7)
        for axis in (top, middle, bottom):
            axis.tick_params(labelsize=7)
            axis.grid(alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run_async output directories")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file")
    args = parser.parse_args(argv)
    plot(args.runs, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
