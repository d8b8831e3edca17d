"""Separation throughput and memory: demucs's ``apply_model`` against the separation engine.

Run by hand (not in CI):

    .venv/bin/python -m bench.separate                        # tiny + htdemucs_6s-random, CPU
    .venv/bin/python -m bench.separate --models tiny --repeat 3
    .venv/bin/python -m bench.separate --separator DIR        # GPU section on the real weights

For each separator it prints seconds of audio separated per wall-clock second for
  (a) ``demucs.apply.apply_model`` on one job at a time (``--seconds`` of stereo 44.1 kHz, the
      normalisation of demucs's ``separate``, ``shifts=0``, ``overlap=0.25``, then input minus
      the vocals), with torch's default intra-op threads (every core), and (a1) on one thread;
  (b) the engine (``remove Vocals``, the same work) with 1, 4 and 8 jobs in flight, as a CPU
      worker runs it: one forward a segment on ``--cpu-workers`` threads (default: every core),
      one intra-op thread each;
  (b2) the same with one forward at a time on every core's intra-op threads (1 and 8 jobs);
  (c) the engine's stacked runner (the CUDA one) with 8 jobs in flight on the CPU, intra-op
      threads on every core (tiny only by default: a stacked batch of real-size segments
      takes minutes and GBs here), to show why a CPU worker does not stack;
then the peak resident memory of the engine separating one 30 s and one 300 s input, and the
CPU time a segment takes in a stacked batch of 1, 2 and 4 (single-threaded). Every
measurement runs in a fresh subprocess (its own threads, its own resident high-water mark)
and starts with an untimed warm-up forward. A GPU section (float32, float16 and bfloat16 under
autocast: throughput with 1 and 8 jobs extracting the vocals, and the SDR of the float16/bfloat16
vocals against the float32 ones, the worst of 8 inputs) runs when a GPU is present.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from models.separation import (
    SeparationConfig,
    SeparationEngine,
    SeparationRequest,
    StemEdit,
    load_separator,
    resolve_separator,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def music(seconds: float, seed: int, rate: int = 44100) -> torch.Tensor:
    """``[2, N]`` float32: partials and noise (the content does not change the work)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    partials = sum(0.1 / k * torch.sin(2 * math.pi * 110 * k * t + seed + k) for k in range(1, 6))
    return (partials + 0.02 * torch.randn(2, t.numel(), generator=g)).float()


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ children
def apply_one(separator, wav: torch.Tensor, vocals: int) -> torch.Tensor:
    """What demucs's `separate` does for one input, then the input minus the vocals."""
    from demucs.apply import apply_model
    ref = wav.mean(0)
    stems = apply_model(separator.model, ((wav - ref.mean()) / ref.std())[None], shifts=0,
                        split=True, overlap=0.25)[0]
    return wav - (stems[vocals] * ref.std() + ref.mean())


def engine_config(spec: dict) -> SeparationConfig:
    return SeparationConfig(max_batch_segments=spec.get("batch", 8), stack=spec.get("stack"),
                            cpu_workers=spec.get("cpu_workers", 1),
                            dtype=DTYPES[spec.get("dtype", "float32")])


def run_engine(engine: SeparationEngine, wavs: list[torch.Tensor], operation: str = "remove"
               ) -> list[torch.Tensor]:
    edits = [StemEdit(operation, "Vocals")]
    handles = [engine.submit(SeparationRequest(f"job{i}", wav, 44100, edits))
               for i, wav in enumerate(wavs)]
    while engine.step():
        pass
    return [handle.result(0).audio for handle in handles]


def child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    separator = load_separator(spec["file"], device)
    kind = spec["kind"]
    if kind == "probe":  # CPU seconds a segment takes in a stacked batch
        window = separator.model.valid_length(1)
        result = {}
        with torch.inference_mode():
            separator.model(torch.randn(1, 2, window) * 0.1)
            for batch in spec["batches"]:
                x = torch.randn(batch, 2, window) * 0.1
                start = time.process_time()
                separator.model(x)
                result[str(batch)] = (time.process_time() - start) / batch
        return {"cpu_seconds_per_segment": result}
    warm = music(separator.segment_seconds, seed=99)
    wavs = [music(spec["seconds"], seed=i) for i in range(spec["jobs"])]
    if kind == "apply":
        vocals = separator.sources.index("vocals")
        apply_one(separator, warm, vocals)
        start = time.perf_counter()
        for wav in wavs:
            apply_one(separator, wav, vocals)
        wall = time.perf_counter() - start
        return {"audio": spec["seconds"] * spec["jobs"], "wall": wall, "rss_peak": rss_peak()}
    engine = SeparationEngine(separator, engine_config(spec))
    run_engine(engine, [warm])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before = rss_peak()
    start = time.perf_counter()
    outputs = run_engine(engine, wavs, spec.get("operation", "remove"))
    wall = time.perf_counter() - start
    out = {"audio": spec["seconds"] * spec["jobs"], "wall": wall, "rss_peak": rss_peak(),
           "rss_before": before, "batch_segments": engine.batch_segments}
    if spec.get("save"):
        torch.save(outputs, spec["save"])
    return out


def spawn(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.separate", "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {spec['kind']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ parent
def cpu_rows(name: str, file: Path, args, run: int) -> tuple[list[dict], list[dict], dict]:
    cores = os.cpu_count() or 1
    common = {"file": str(file), "seconds": args.seconds}
    rows = []
    base = spawn({**common, "kind": "apply", "jobs": args.apply_jobs, "threads": cores})
    rows.append({"runner": f"(a) apply_model, one job at a time ({cores} intra-op threads)",
                 "jobs": 1, **base})
    single = spawn({**common, "kind": "apply", "jobs": args.apply_jobs, "threads": 1})
    rows.append({"runner": "(a1) apply_model, one job at a time (1 thread)", "jobs": 1,
                 **single})
    for jobs in args.jobs:
        result = spawn({**common, "kind": "engine", "jobs": jobs, "threads": 1,
                        "cpu_workers": args.cpu_workers or cores, "stack": False})
        rows.append({"runner": f"(b) engine, 1 segment/forward on {args.cpu_workers or cores} "
                               "threads", "jobs": jobs, **result})
    for jobs in (1, 8):
        result = spawn({**common, "kind": "engine", "jobs": jobs, "threads": cores,
                        "cpu_workers": 1, "stack": False})
        rows.append({"runner": f"(b2) engine, 1 segment/forward, {cores} intra-op threads",
                     "jobs": jobs, **result})
    if name == "tiny" or args.stacked_real:
        result = spawn({**common, "kind": "engine", "jobs": 8, "threads": cores, "stack": True})
        rows.append({"runner": "(c) engine, stacked batch of 8 (the CUDA runner)", "jobs": 8,
                     **result})
    for row in rows:
        row.update(model=name, run=run, rate=row["audio"] / row["wall"],
                   ratio=(row["audio"] / row["wall"]) / (base["audio"] / base["wall"]))
    memory = [{"model": name, "run": run, "seconds": seconds,
               **spawn({"file": str(file), "seconds": seconds, "kind": "engine", "jobs": 1,
                        "threads": 1, "cpu_workers": args.cpu_workers or cores, "stack": False})}
              for seconds in (30, 300)]
    probe = spawn({"file": str(file), "kind": "probe", "threads": 1, "batches": [1, 2, 4]})
    return rows, memory, probe


def gpu_rows(name: str, file: Path, args) -> list[dict]:
    rows = []
    saved = {}
    for dtype in DTYPES:
        for jobs in (1, 8):
            save = Path(args.cache_dir) / f"bench-separate-{dtype}-{jobs}.pt" if jobs == 8 else None
            result = spawn({"file": str(file), "kind": "engine", "device": "cuda", "jobs": jobs,
                            "seconds": args.seconds, "threads": 1, "stack": True, "batch": 32,
                            "dtype": dtype, "operation": "extract",
                            **({"save": str(save)} if save else {})})
            rows.append({"model": name, "dtype": dtype, "jobs": jobs, **result,
                         "rate": result["audio"] / result["wall"]})
            if save:
                saved[dtype] = torch.load(save)
                save.unlink()
    for row in rows:
        if row["jobs"] == 8 and row["dtype"] != "float32":
            row["sdr_db"] = min(sdr(ref, est) for ref, est in
                                zip(saved["float32"], saved[row["dtype"]], strict=True))
    return rows


def sdr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Signal-to-distortion ratio of `estimate` against `reference`, dB."""
    error = (reference - estimate).pow(2).sum().clamp_min(1e-20)
    return float(10 * torch.log10(reference.pow(2).sum() / error))


def print_tables(rows, memory, probes, gpu, args) -> None:
    print(f"\n## CPU throughput ({args.seconds:g} s stereo 44.1 kHz jobs, remove Vocals)\n")
    print("| separator | run | runner | jobs in flight | audio s | wall s | audio s / wall s "
          "| vs (a) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['run']} | {r['runner']} | {r['jobs']} | {r['audio']:g} | "
              f"{r['wall']:.1f} | {r['rate']:.2f} | {r['ratio']:.2f}x |")
    print("\n## Peak resident memory of the engine process (one job)\n")
    print("| separator | run | input | peak RSS GB | 300 s / 30 s |")
    print("|---|---|---|---|---|")
    for m in memory:
        pair = [x for x in memory if x["model"] == m["model"] and x["run"] == m["run"]]
        ratio = pair[1]["rss_peak"] / pair[0]["rss_peak"]
        print(f"| {m['model']} | {m['run']} | {m['seconds']} s | {m['rss_peak'] / 2**30:.2f} | "
              + (f"{ratio:.2f}x |" if m is pair[1] else "|"))
    print("\n## CPU seconds a segment takes in a stacked batch (one intra-op thread)\n")
    print("| separator | run | batch 1 | batch 2 | batch 4 |")
    print("|---|---|---|---|---|")
    for (name, run), probe in probes.items():
        per = probe["cpu_seconds_per_segment"]
        print(f"| {name} | {run} | " + " | ".join(f"{per[b]:.3f}" for b in ("1", "2", "4"))
              + " |")
    if gpu:
        print(f"\n## GPU ({torch.cuda.get_device_name()}), stacked runner, batch <= 32\n")
        print("| separator | dtype | jobs in flight | audio s / wall s | SDR vs float32 (dB) |")
        print("|---|---|---|---|---|")
        for g in gpu:
            sdr_db = f"{g['sdr_db']:.1f}" if "sdr_db" in g else ""
            print(f"| {g['model']} | {g['dtype']} | {g['jobs']} | {g['rate']:.1f} | {sdr_db} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "htdemucs_6s-random"])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each job")
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--apply-jobs", type=int, default=2,
                        help="jobs (a) separates one after another")
    parser.add_argument("--cpu-workers", type=int, default=0, help="0: every core")
    parser.add_argument("--stacked-real", action="store_true",
                        help="also run (c) for the real-size separator")
    parser.add_argument("--separator", default=None,
                        help="weights for the GPU section (default: the --models presets)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"# bench.separate {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}", flush=True)
    rows, memory, probes, gpu = [], [], {}, []
    for run in range(1, args.repeat + 1):
        for name in args.models:
            file = resolve_separator(name, args.cache_dir)
            r, m, p = cpu_rows(name, file, args, run)
            rows += r
            memory += m
            probes[(name, run)] = p
            print(f"run {run} {name}: done", file=sys.stderr, flush=True)
    if torch.cuda.is_available():
        for name in ([args.separator] if args.separator else args.models):
            gpu += gpu_rows(name, resolve_separator(name, args.cache_dir), args)
    print_tables(rows, memory, probes, gpu, args)


if __name__ == "__main__":
    main()
