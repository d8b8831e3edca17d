"""Decode throughput: audiocraft's generate (sequential and batched) against our engine.

Run by hand (not in CI):

    .venv/bin/python -m bench.decode                     # tiny + small-random, CPU, < 10 min
    .venv/bin/python -m bench.decode --presets tiny --batches 1 4

For each preset and batch size it prints decode steps/s and seconds of audio produced per
wall-clock second for
  (a) audiocraft `LMModel.generate` running the jobs one after another (one job timed,
      multiplied: they run in sequence; timed again for every batch size, right before that
      batch's (c) and (b), so each row's ratios compare runs made at the same time),
  (b) audiocraft `generate` on the whole batch as plain MusicGen, one text per row (the best
      audiocraft can do: it cannot take per-row condition audio),
  (c) this engine with the full Instruct-MusicGen model (audio fusion + LoRA), per-row sampling
      parameters and seeds,
with the ratios (c)/(a) and (c)/(b) and the peak resident memory during each run. All three
get the same work: clips of `--seconds` (>= 100 decode steps), classifier-free guidance
(cfg 3), top-k 250 sampling. Timing covers producing the codes (text encoding, the
condition path and decoding for (c)); EnCodec encode/decode of audio is excluded from all three.
Each engine is built (CUDA graphs captured) and warmed up before its timed runs, as a worker's
engine is before it takes jobs. A CUDA section (fp16, CUDA graphs on and off) runs when a GPU is
present. Last, for each preset, one steady-state engine step is counted: ATen calls per layer
(target <= 40), calls outside the layers, host reads and tensors built from Python lists
(target 0).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
from audiocraft.modules.conditioners import ConditioningAttributes

from models.engine import EditEngine, EditRequest, EngineConfig
from models.engine.inspection import count_dispatch
from models.loader import load_model
from models.presets import resolve_model
from models.sampling import SamplingParams

TOP_K = 250
TEXTS = ["Music piece. Instruct: Add Drums.", "Music piece. Instruct: No Bass.",
         "Music piece. Instruct: Only Guitar.", "Music piece. Instruct: Add Piano."]


class PeakMemory:
    """Peak memory during a block: resident set size on the CPU (sampled every 5 ms), the
    allocator's peak on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_audiocraft(model, batch: int, frames: int) -> tuple[float, int]:
    """audiocraft's own generate on `batch` texts; returns (seconds, peak bytes)."""
    lm = model.lm.lm
    conditions = [ConditioningAttributes(text={"description": TEXTS[i % len(TEXTS)]})
                  for i in range(batch)]
    with PeakMemory(model.device) as mem, torch.no_grad():
        _sync(model.device)
        start = time.perf_counter()
        lm.generate(conditions=conditions, max_gen_len=frames, use_sampling=True,
                    top_k=min(TOP_K, lm.card),
                    cfg_coef=3.0)
        _sync(model.device)
        seconds = time.perf_counter() - start
    return seconds, mem.peak


def build_engine(model, batch: int, use_cuda_graphs: bool = True) -> EditEngine:
    """An engine for `batch` jobs, built (graphs captured) and warmed up with a short job:
    what a worker has before it takes its first job; none of this is timed."""
    engine = EditEngine(model, EngineConfig(max_batch_size=batch, use_cuda_graphs=use_cuda_graphs))
    warm = torch.zeros(model.lm.num_codebooks, 16, dtype=torch.long, device=model.device)
    handles = [engine.submit_codes(EditRequest(f"warm{i}", None, model.sample_rate, TEXTS[0]),
                                   warm) for i in range(batch)]
    while engine.step():
        pass
    for handle in handles:
        handle.codes()
    return engine


def run_engine(engine: EditEngine, batch: int, codes: torch.Tensor) -> tuple[float, int, int]:
    """Our engine on `batch` different jobs; returns (seconds, peak bytes, steps)."""
    model = engine.model
    jobs = [dict(text=TEXTS[i % len(TEXTS)],
                 params=SamplingParams(seed=i, top_k=min(TOP_K, model.lm.card), cfg_coef=3.0))
            for i in range(batch)]
    steps_before = engine.steps_total
    with PeakMemory(model.device) as mem:
        _sync(model.device)
        start = time.perf_counter()
        handles = [engine.submit_codes(EditRequest(f"bench{i}", None, model.sample_rate, j["text"],
                                                   j["params"]), codes)
                   for i, j in enumerate(jobs)]
        while engine.step():
            pass
        for handle in handles:
            handle.codes()
        _sync(model.device)
        seconds = time.perf_counter() - start
    return seconds, mem.peak, engine.steps_total - steps_before


def count_step(model, codes: torch.Tensor, batch: int = 8) -> dict:
    """ATen calls and host reads of one steady-state step of an eager engine."""
    engine = EditEngine(model, EngineConfig(max_batch_size=batch, use_cuda_graphs=False))
    for i in range(batch):
        engine.submit_codes(EditRequest(f"count{i}", None, model.sample_rate, TEXTS[i % 4],
                                        SamplingParams(seed=i, top_k=min(TOP_K, model.lm.card))),
                            codes)
    for _ in range(3):  # admission, prefill, first steps
        engine.step()
    with count_dispatch(model.lm) as counts:
        engine.step()
    while engine.step():
        pass
    return dict(per_layer=counts.per_layer, outside=counts.outside_layers,
                host_reads=counts.host_reads, from_python=counts.from_python,
                layers=counts.layers)


def bench_preset(name: str, device: torch.device, batches: list[int], seconds_audio: float,
                 cache_dir: Path, rows: list[dict], use_graphs_options=(True,),
                 repeat: int = 1) -> None:
    model = load_model(resolve_model(name, cache_dir), device=device)
    frames = int(round(seconds_audio * model.frame_rate))
    steps = frames + max(model.lm.lm.pattern_provider.delays)  # decode steps per job
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, model.lm.card, (model.lm.num_codebooks, frames), generator=g)
    codes = codes.to(device)
    # warm-up (allocator, threads, lazy initialisation) for audiocraft; engines warm up as built
    run_audiocraft(model, 1, 16)
    # (a): one job alone; a batch of them runs in sequence (time one job, multiply). It is
    # timed again next to each batch size's (c) and (b): this machine's speed drifts by tens
    # of percent over minutes (a shared VM), and ratios of runs minutes apart would carry that
    # drift. With --repeat N every run is repeated and the fastest kept (least interference).
    def best(run):
        results = [run() for _ in range(repeat)]
        return min(results, key=lambda r: r[0])

    for batch in batches:
        sequential_s, sequential_mem = best(partial(run_audiocraft, model, 1, frames))
        a_seconds = sequential_s * batch
        for graphs in use_graphs_options:
            engine = build_engine(model, batch, use_cuda_graphs=graphs)
            c_seconds, c_mem, _ = best(partial(run_engine, engine, batch, codes))
            if batch == 1:  # (b) at batch 1 is the same run as (a)
                b_seconds, b_mem = sequential_s, sequential_mem
            else:
                b_seconds, b_mem = best(partial(run_audiocraft, model, batch, frames))
            audio_s = batch * seconds_audio
            dtype = str(model.dtype).replace("torch.", "")
            row = dict(preset=name, device=device.type, dtype=dtype,
                       graphs=("on" if graphs else "off") if device.type == "cuda" else "-",
                       batch=batch, steps=steps,
                       a_steps=steps / sequential_s, a_rt=audio_s / a_seconds,
                       b_steps=steps / b_seconds, b_rt=audio_s / b_seconds,
                       c_steps=steps / c_seconds, c_rt=audio_s / c_seconds,
                       c_over_a=a_seconds / c_seconds, c_over_b=b_seconds / c_seconds,
                       a_mem=sequential_mem, b_mem=b_mem, c_mem=c_mem)
            rows.append(row)
            print(_format_row(row), flush=True)
    if device.type == "cpu":
        counts = count_step(model, codes)
        print(f"{name}: one steady-state eager step at batch 8: {counts['per_layer']:.1f} ATen "
              f"calls per layer ({counts['layers']} layers), {counts['outside']} outside the "
              f"layers, {counts['host_reads']} host reads, {counts['from_python']} tensors from "
              "Python lists", flush=True)


HEADER = ("preset        dev  dtype    graphs batch steps | (a) seq steps/s audio-s/s | "
          "(b) ac-batch steps/s audio-s/s | (c) engine steps/s audio-s/s | c/a    c/b   | "
          "peak MB a / b / c")


def _format_row(r: dict) -> str:
    mb = 1024 * 1024
    return (f"{r['preset']:<13} {r['device']:<4} {r['dtype']:<8} {r['graphs']:<6} {r['batch']:>5} "
            f"{r['steps']:>5} | {r['a_steps']:>15.2f} {r['a_rt']:>9.2f} | {r['b_steps']:>20.2f} "
            f"{r['b_rt']:>9.2f} | {r['c_steps']:>18.2f} {r['c_rt']:>9.2f} | {r['c_over_a']:>6.2f} "
            f"{r['c_over_b']:>5.2f} | {r['a_mem'] / mb:>6.0f} / {r['b_mem'] / mb:.0f} / "
            f"{r['c_mem'] / mb:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small-random"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="clip length; 2 s = 100 frames = 103 decode steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cache-dir", type=Path, default=Path("var/models"),
                        help="where random presets are written (default: make serve's)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every measurement N times and keep the fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    print(f"torch {torch.__version__}, {args.threads} CPU threads, clips of {args.seconds:g} s")
    print(HEADER)
    for name in args.presets:
        bench_preset(name, torch.device("cpu"), args.batches, args.seconds, args.cache_dir, rows,
                     repeat=args.repeat)
    if torch.cuda.is_available():
        print(f"\nCUDA: {torch.cuda.get_device_name()}")
        print(HEADER)
        for name in args.presets:
            bench_preset(name, torch.device("cuda"), args.batches, args.seconds, args.cache_dir,
                         rows, use_graphs_options=(False, True), repeat=args.repeat)
    cpu_small = [r for r in rows if r["preset"] == "small-random" and r["device"] == "cpu"
                 and r["batch"] == 8]
    if cpu_small:
        print(f"batch8_vs_sequential={cpu_small[0]['c_over_a']:.2f}")
        print(f"batch8_vs_batched={cpu_small[0]['c_over_b']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
