"""One-shot check of the decoding engine on one GPU: correctness checks and measurements.

Run by hand on a GPU host (at most ~8 minutes on an H100 at MusicGen-large dimensions):

    .venv/bin/python -m bench.gpu_check --json var/gpu_check.json

On the lent device machine, which has torch but not audiocraft and no network, first build
the wheelhouse here (`bench/gpu_wheelhouse.sh .whl`, ~3 MB) and run there:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site:. python3 -m bench.gpu_check --json $OUT/gpu_check.json

`--device cpu --preset tiny` runs every check that can run without a GPU (CI does).

The model is built from config with random weights at the chosen preset's dimensions
(`large`: 48 layers, width 2048, 4 x 2048 codes, the real EnCodec's sizes), directly on the
device in fp16 (float32 on the CPU); nothing is downloaded. Checks print PASS, FAIL or SKIP;
the exit status is 1 if any check failed. Measurements: decode steps/s and seconds of audio
per second at batch 1, 8, 32 and 64; bytes read per step against the card's measured copy
bandwidth (the roofline); one 3-minute song alone, end to end.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import platform
import sys
import tempfile
import threading
import time
import traceback
import types
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

# Modules audiocraft imports at the top of files our LM/EnCodec path loads but never calls
# (attention kernels, tokenisation for other conditioners, file decoding, training tools).
# Only when one is missing (the device image has no audiocraft dependencies) does the check
# replace it by an inert module; the product never does.
SHIMMABLE = ("xformers", "spacy", "av", "librosa", "dora", "hydra", "submitit", "treetable")

TEMPLATES = ("Music piece. Instruct: Add Drums.", "Music piece. Instruct: No Bass.",
             "Music piece. Instruct: Only Guitar.", "Music piece. Instruct: Add Piano.")
TARGET_BATCH1_STEPS = 200.0       # steps/s at batch 1 (H100, MusicGen-large dimensions)
TARGET_BATCH32_AUDIO = 80.0       # seconds of audio per second at batch 32


# ----------------------------------------------------------------- import shims
class _Unavailable(type):
    """What a shimmed module's attributes are: classes that refuse to be used."""

    def __getattr__(cls, name: str) -> tp.Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        raise RuntimeError(f"{cls.__qualname__} was replaced by the GPU check's import shim: "
                           "the engine's path should never call it")


def _unavailable(qualname: str) -> type:
    return _Unavailable(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname})


class _ShimModule(types.ModuleType):
    def __getattr__(self, name: str) -> tp.Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"{self.__name__}.{name}")


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname: str, path: tp.Any, target: tp.Any = None) -> tp.Any:
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: tp.Any) -> types.ModuleType:
        module = _ShimModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install_import_shims(candidates: tp.Sequence[str] = SHIMMABLE) -> list[str]:
    """Shim the candidates that cannot be imported here; returns their names."""
    missing = []
    for name in candidates:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        sys.meta_path.append(_ShimFinder(set(missing)))
    return missing


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


# ------------------------------------------------------------------- report
@dataclass
class Report:
    device: str
    preset: str
    dtype: str
    environment: dict
    checks: list[dict] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)

    def check(self, name: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.checks.append(dict(name=name, status=status, detail=detail))
        print(f"{status:<4}  {name:<34} {detail}", flush=True)

    def measure(self, name: str, value: tp.Any, unit: str = "", show: bool = True) -> None:
        self.measurements[name] = value
        if show:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"      {name:<34} {shown} {unit}", flush=True)

    @property
    def failed(self) -> bool:
        return any(c["status"] == "FAIL" for c in self.checks)


def guarded(report: Report, name: str, run: tp.Callable[[], None]) -> None:
    """Run one check or measurement; an exception is a FAIL line, not the end of the run."""
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next runs
        report.check(name, False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        traceback.print_exc()


# -------------------------------------------------------------------- check
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--preset", default=None, choices=("tiny", "small-random", "large"),
                        help="model dimensions (default: large on CUDA, tiny on the CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--song-seconds", type=float, default=None,
                        help="length of the song decoded alone (default 180; 20 on the CPU)")
    parser.add_argument("--json", type=Path, default=Path("var/gpu_check.json"))
    args = parser.parse_args(argv)
    shims = install_import_shims()

    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --preset tiny for the CPU checks")
        return 2
    preset = args.preset or ("large" if cuda else "tiny")
    song_seconds = args.song_seconds or (180.0 if cuda else 20.0)
    dtype = torch.float16 if cuda else torch.float32
    environment = dict(python=platform.python_version(), torch=torch.__version__,
                       device_name=(torch.cuda.get_device_name(device) if cuda
                                    else _cpu_name()),
                       shimmed_imports=shims, cuda=torch.version.cuda)
    report = Report(str(device), preset, str(dtype).replace("torch.", ""), environment)
    print(f"gpu_check: {environment['device_name']} ({device}), preset {preset}, {report.dtype}, "
          f"torch {torch.__version__}, python {environment['python']}, shims {shims or 'none'}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        _run(report, device, preset, dtype, Path(tmp), args.batches, song_seconds)
    report.measure("wall_seconds", time.perf_counter() - started, "s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(device=report.device, preset=report.preset,
                                         dtype=report.dtype, environment=report.environment,
                                         checks=report.checks,
                                         measurements=report.measurements), indent=2))
    print(f"\n{sum(c['status'] == 'PASS' for c in report.checks)} passed, "
          f"{sum(c['status'] == 'FAIL' for c in report.checks)} failed, "
          f"{sum(c['status'] == 'SKIP' for c in report.checks)} skipped; JSON: {args.json}")
    return 1 if report.failed else 0


def _run(report: Report, device: tp.Any, preset: str, dtype: tp.Any, tmp: Path,
         batches: list[int], song_seconds: float) -> None:
    import torch

    from models import configs
    from models.presets import build_random_model

    sizes = {"tiny": (configs.TINY_LM, configs.TINY_CODEC),
             "small-random": (configs.MUSICGEN_SMALL, configs.ENCODEC_32KHZ),
             "large": (configs.MUSICGEN_LARGE, configs.ENCODEC_32KHZ)}[preset]
    t0 = time.perf_counter()
    model = build_random_model(*sizes, device=device, dtype=dtype, t5_dir=tmp / "t5")
    report.measure("model_build_seconds", time.perf_counter() - t0, "s")
    cuda = device.type == "cuda"
    guarded(report, "cache bytes per slot", lambda: check_cache_bytes(report, model))
    guarded(report, "fp16 vs float32 logits", lambda: check_fp16(report, model, sizes, tmp))
    engines: dict[str, tp.Any] = {}
    guarded(report, "graph replay = eager (greedy)", lambda: check_graphs(report, model, engines))
    guarded(report, "no sync in steady-state steps", lambda: check_no_sync(report, model, engines))
    guarded(report, "8 submitting threads never fail",
            lambda: check_threads(report, model, engines))
    engines.clear()
    if cuda:
        torch.cuda.empty_cache()
    guarded(report, "5-minute input encode + decode", lambda: check_codec_memory(report, model))
    guarded(report, "throughput", lambda: measure_throughput(report, model, batches))
    guarded(report, "3-minute song alone", lambda: measure_song(report, model, song_seconds))


# ----------------------------------------------------------------- checks
def _config(**overrides: tp.Any) -> tp.Any:
    from models.engine import EngineConfig
    return EngineConfig(**overrides)


def _codes(model: tp.Any, frames: int, seed: int) -> tp.Any:
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.lm.card, (model.lm.num_codebooks, frames), generator=g)


def _run_jobs(engine: tp.Any, jobs: list[tuple[tp.Any, str, tp.Any]]) -> list[tp.Any]:
    from models.engine import EditRequest
    handles = [engine.submit_codes(EditRequest(f"job{i}", None, engine.model.sample_rate, text,
                                               params), codes)
               for i, (codes, text, params) in enumerate(jobs)]
    while engine.step():
        pass
    return [handle.codes().cpu() for handle in handles]


def _sync(device: tp.Any) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_cache_bytes(report: Report, model: tp.Any) -> None:
    """Memory the slot buffers take per slot, measured, against `bytes_per_slot`."""
    import torch

    from models.engine.kv_cache import SlotBuffers, SlotGeometry
    window = int(round(5.0 * model.frame_rate))
    geometry = SlotGeometry.for_model(model.lm, window, 16)
    computed = geometry.bytes_per_slot(model.dtype)
    slots = 4
    if model.device.type == "cuda":
        _sync(model.device)
        before = torch.cuda.memory_allocated(model.device)
        buffers = SlotBuffers(geometry, slots, model.device, model.dtype)
        _sync(model.device)
        measured = (torch.cuda.memory_allocated(model.device) - before) / slots
        how = "allocated"
    else:
        buffers = SlotBuffers(geometry, slots, model.device, model.dtype)
        measured = sum(t.numel() * t.element_size() for t in (
            buffers.self_kv, buffers.text_kv, buffers.text_bias, buffers.cond_q, buffers.cond_kv,
            buffers.cond_bias, buffers.cond_frames)) / slots
        how = "tensor sizes"
    del buffers
    report.measure("cache_bytes_per_slot_computed", computed, "B")
    report.measure("cache_bytes_per_slot_measured", measured, "B")
    ok = abs(measured - computed) <= 0.01 * computed + 4096
    report.check("cache bytes per slot", ok, f"{measured / 2**20:.1f} MiB {how} vs "
                 f"{computed / 2**20:.1f} MiB computed (5 s window, 16 text tokens)")


def check_fp16(report: Report, model: tp.Any, sizes: tp.Any, tmp: Path) -> None:
    """The same random weights in float32 and in the serving dtype: logits of a window."""
    import torch

    from models.attention import NoCache
    from models.presets import build_random_model
    half_dtype = torch.float16
    if model.dtype == half_dtype:
        half = model
    else:  # the CPU run: build the fp16 copy (fp16 matmuls run on the CPU, slowly)
        half = build_random_model(*sizes, device=model.device, dtype=half_dtype,
                                  t5_dir=tmp / "t5-half")
    full = build_random_model(*sizes, device=model.device, dtype=torch.float32,
                              t5_dir=tmp / "t5-full")
    frames = 64
    codes = _codes(model, frames, seed=1).to(model.device)
    outs = []
    with torch.no_grad():
        for m in (half, full):
            lm = m.lm
            pattern = lm.lm.pattern_provider.get_pattern(frames)
            sequence, _, _ = pattern.build_pattern_sequence(codes.unsqueeze(0), lm.special_token_id)
            sequence = sequence.expand(2, -1, -1)
            condition = lm.encode_condition(codes.unsqueeze(0))
            condition.rows_per_condition = 2
            text = lm.encode_text(lm.text_embeddings([TEMPLATES[0], None]))
            positions = torch.arange(sequence.shape[-1], device=model.device).expand(2, -1)
            outs.append(lm(sequence, positions, text, condition, NoCache()).float())
    diff = (outs[0] - outs[1]).abs()
    scale = outs[1].abs().max().item()
    agree = (outs[0].argmax(-1) == outs[1].argmax(-1)).float().mean().item()
    report.measure("fp16_max_abs_diff", diff.max().item())
    report.measure("fp16_top1_agreement", agree)
    ok = agree >= 0.98 and diff.max().item() <= 0.02 * max(scale, 1e-6)
    report.check("fp16 vs float32 logits", ok, f"max |diff| {diff.max().item():.3g} "
                 f"(logits up to {scale:.3g}), top-1 agreement {agree:.4f} over "
                 f"{outs[1].shape[2]} positions x {outs[1].shape[1]} codebooks x 2 rows")
    del full, outs
    if half is not model:
        del half


def _mixed_jobs(model: tp.Any, count: int, greedy: bool) -> list[tuple[tp.Any, str, tp.Any]]:
    from models.sampling import SamplingParams
    window = int(round(5.0 * model.frame_rate))
    jobs = []
    for i in range(count):
        frames = window - (i * 37) % (window // 2)  # one window each, of different lengths
        params = (SamplingParams(seed=i, top_k=1) if greedy
                  else SamplingParams(seed=i, top_k=250 if i % 2 else 50,
                                      top_p=0.9 if i % 3 == 0 else 0.0, cfg_coef=1.0 + i % 4))
        jobs.append((_codes(model, frames, seed=100 + i), TEMPLATES[i % len(TEMPLATES)], params))
    return jobs


def check_graphs(report: Report, model: tp.Any, engines: dict[str, tp.Any]) -> None:
    if model.device.type != "cuda":
        report.check("graph replay = eager (greedy)", None, "CUDA graphs need a GPU")
        return
    from models.engine import EditEngine
    started = time.perf_counter()
    engines["graphs"] = EditEngine(model, _config(max_batch_size=8))
    report.measure("engine_build_seconds_8_slots", time.perf_counter() - started, "s")
    runner = engines["graphs"].runner
    report.measure("graphs_captured_8_slots", len(runner.graphs))
    eager = EditEngine(model, _config(max_batch_size=8, use_cuda_graphs=False))
    jobs = _mixed_jobs(model, 8, greedy=True)
    graphs_codes = _run_jobs(engines["graphs"], jobs)
    eager_codes = _run_jobs(eager, jobs)
    mismatched = sum(int((a != b).sum()) for a, b in zip(graphs_codes, eager_codes, strict=True))
    total = sum(a.numel() for a in graphs_codes)
    report.check("graph replay = eager (greedy)", mismatched == 0 and runner.capture_failures == 0,
                 f"{mismatched} of {total} tokens differ over 8 jobs of one window each; "
                 f"{len(runner.graphs)} shapes captured, {runner.capture_failures} failed")


def check_no_sync(report: Report, model: tp.Any, engines: dict[str, tp.Any]) -> None:
    import torch

    from models.engine import EditEngine, EditRequest
    from models.engine.inspection import count_dispatch
    engine = engines.get("graphs") or EditEngine(model, _config(max_batch_size=8))
    eager = EditEngine(model, _config(max_batch_size=8, use_cuda_graphs=False))
    reads = []
    for e in (engine, eager):
        for i, (codes, text, params) in enumerate(_mixed_jobs(model, 4, greedy=False)):
            e.submit_codes(EditRequest(f"sync{i}", None, model.sample_rate, text, params), codes)
        for _ in range(4):  # admission and prefill may synchronise; steady steps may not
            e.step()
        cuda = model.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(model.device)
            torch.cuda.set_sync_debug_mode("error")
        try:
            with count_dispatch(model.lm) as counts:
                for _ in range(10):
                    e.step()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        reads.append(counts.host_reads + counts.from_python)
        while e.step():
            pass
    how = "set_sync_debug_mode('error') raised nothing and" if model.device.type == "cuda" else ""
    report.check("no sync in steady-state steps", reads == [0, 0],
                 f"{how} 10 steps each (graphs, eager) made {reads} host reads / tensors "
                 "from Python lists")


def check_threads(report: Report, model: tp.Any, engines: dict[str, tp.Any]) -> None:
    """8 threads submit audio (EnCodec on their own streams) while the engine decodes."""
    import numpy as np
    import torch

    from models.engine import EditEngine, EditRequest
    from models.sampling import SamplingParams
    engine = engines.get("graphs") or EditEngine(model, _config(max_batch_size=8))
    captures = len(engine.runner.graphs)
    engine.start()
    failures: list[str] = []
    lengths: list[bool] = []

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        for round_ in range(2):
            seconds = 3.0 + (index * 7 + round_ * 3) % 6
            t = np.arange(int(44100 * seconds)) / 44100
            wav = (0.2 * np.sin(2 * np.pi * (110 + 30 * index) * t)[None].repeat(2, 0)
                   + 0.02 * rng.standard_normal((2, t.size))).astype(np.float32)
            try:
                out = engine.submit(EditRequest(f"t{index}-{round_}", wav, 44100,
                                                TEMPLATES[index % 4],
                                                SamplingParams(seed=index))).result(timeout=600)
                lengths.append(abs(out.audio.shape[-1] / out.sample_rate - seconds) < 0.05
                               and bool(torch.isfinite(out.audio).all()))
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(0, 0.5))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.stop()
    ok = not failures and len(lengths) == 16 and all(lengths)
    report.check("8 submitting threads never fail", ok and len(engine.runner.graphs) == captures,
                 f"16 jobs of 3-8 s stereo 44.1 kHz from 8 threads: {len(failures)} failed, "
                 f"{sum(lengths)} complete and finite; no capture while serving"
                 + (f"; first error: {failures[0][:200]}" if failures else ""))


def check_codec_memory(report: Report, model: tp.Any) -> None:
    """Peak device memory of a 5-minute input's encode and decode (in chunks) against one
    chunk's: flat in the length. On the CPU the process's resident high-water mark was set by
    earlier work, so only the result is checked here (tests/models/test_codec.py measures
    the CPU peak in fresh processes)."""
    import torch

    from models import codec
    chunking = codec.Chunking.from_seconds(model.frame_rate, 10.0, 1.0)
    seconds = 300
    x = 0.1 * torch.randn(1, 1, int(model.sample_rate * seconds))
    cuda = model.device.type == "cuda"

    def run(audio: tp.Any) -> tuple[float, float, tp.Any]:
        started = time.perf_counter()
        if cuda:
            _sync(model.device)
            base = torch.cuda.memory_allocated(model.device)
            torch.cuda.reset_peak_memory_stats(model.device)
        codes = codec.encode(model.codec, audio, chunking)
        out = codec.decode(model.codec, codes, audio.shape[-1], chunking)
        peak = 0.0
        if cuda:
            _sync(model.device)
            peak = float(torch.cuda.max_memory_allocated(model.device) - base)
        return peak, time.perf_counter() - started, out

    one_chunk, _, _ = run(x[..., :int(model.sample_rate * 12)])
    peak, taken, out = run(x)
    report.measure("codec_300s_seconds", taken, "s")
    complete = out.shape[-1] == x.shape[-1] and bool(torch.isfinite(out).all())
    if not cuda:
        report.check("5-minute input encode + decode", complete,
                     f"300 s in {taken:.1f} s, {out.shape[-1]} samples out, finite; CPU memory: "
                     "tests/models/test_codec.py")
        return
    report.measure("codec_peak_bytes_12s", one_chunk, "B")
    report.measure("codec_peak_bytes_300s", peak, "B")
    report.check("5-minute input encode + decode", complete and peak <= 1.5 * one_chunk + 2 ** 26,
                 f"peak device memory {peak / 2**20:.0f} MiB for 300 s vs {one_chunk / 2**20:.0f} "
                 f"MiB for one 12 s chunk ({taken:.1f} s; one pass would need ~9 GB)")


# ------------------------------------------------------------- measurements
def copy_bandwidth(device: tp.Any) -> float:
    """Device memory bandwidth (bytes/s) of a large device-to-device copy (read + write)."""
    import torch
    size = 2 ** 30
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size / best


def bytes_per_step(model: tp.Any, engine: tp.Any, batch: int) -> float:
    """Bytes a decode step reads, averaged over a 5 s window: the weights it uses (self- and
    cross-attention query/output, feed-forward, the fused heads) and, per slot, the cached
    keys/values over the attended lengths (bucketed as the runner does), q', K', V' of the
    condition and the text keys/values."""
    lm = model.lm
    item = model.dtype.itemsize
    d = lm.dim
    layer_weights = 14 * d * d * item  # qkv 3, out 1, cross q 1, cross out 1, ff 4 + 4
    heads = lm.num_codebooks * lm.card * d * item
    g = engine.geometry
    runner = engine.runner
    width = lm.num_layers * d * item
    per_slot = 0.0
    steps = range(1, g.max_sequence)
    for position in steps:
        _, self_length, cond_length = runner.shape_for(1, position + 1, g.condition_positions)
        per_slot += width * (2 * 2 * self_length + 2 * cond_length + 2 * 2 * g.max_text_tokens)
    per_slot /= len(steps)
    bucket = runner.bucket_for(batch)
    return lm.num_layers * layer_weights + heads + bucket * per_slot


def measure_throughput(report: Report, model: tp.Any, batches: list[int]) -> None:
    from models.engine import EditEngine
    cuda = model.device.type == "cuda"
    bandwidth = copy_bandwidth(model.device) if cuda else float("nan")
    if cuda:
        report.measure("copy_bandwidth_GBps", bandwidth / 1e9, "GB/s")
    started = time.perf_counter()
    engine = EditEngine(model, _config(max_batch_size=max(batches)))
    report.measure("engine_build_seconds_max_batch", time.perf_counter() - started, "s")
    report.measure("graphs_captured_max_batch", len(engine.runner.graphs))
    report.measure("memory_plan", engine.memory_plan, show=bool(engine.memory_plan))
    window = int(round(5.0 * model.frame_rate))
    rows = []
    for batch in batches:
        jobs = [(_codes(model, window, i), text, params)  # full windows: 5 s of audio each
                for i, (_, text, params) in enumerate(_mixed_jobs(model, batch, greedy=False))]
        _run_jobs(engine, jobs[:1])  # warm the allocator at this size
        steps_before = engine.steps_total
        _sync(model.device)
        begin = time.perf_counter()
        _run_jobs(engine, jobs)
        _sync(model.device)
        seconds = time.perf_counter() - begin
        steps = engine.steps_total - steps_before
        steps_per_s = steps / seconds
        audio_per_s = batch * window / model.frame_rate / seconds
        moved = bytes_per_step(model, engine, batch)
        roofline = moved * steps_per_s / bandwidth if cuda else float("nan")
        rows.append(dict(batch=batch, steps=steps, seconds=seconds, steps_per_s=steps_per_s,
                         audio_seconds_per_s=audio_per_s, bytes_per_step=moved,
                         roofline_fraction=roofline))
        print(f"      batch {batch:>3}: {steps_per_s:8.1f} steps/s  {audio_per_s:8.1f} audio-s/s  "
              f"{moved / 1e9:6.2f} GB/step  roofline {roofline:.2f}", flush=True)
    report.measure("throughput", rows, show=False)
    by_batch = {r["batch"]: r for r in rows}
    if cuda and report.preset == "large":
        if 1 in by_batch:
            value = by_batch[1]["steps_per_s"]
            report.check("target: batch 1 >= 200 steps/s", value >= TARGET_BATCH1_STEPS,
                         f"{value:.1f} steps/s")
        if 32 in by_batch:
            value = by_batch[32]["audio_seconds_per_s"]
            report.check("target: batch 32 >= 80 audio-s/s", value >= TARGET_BATCH32_AUDIO,
                         f"{value:.1f} s of audio per second")
    else:
        report.check("targets (H100, large)", None, "measured above; targets apply to "
                     "MusicGen-large dimensions on a GPU")


def measure_song(report: Report, model: tp.Any, seconds: float) -> None:
    """One song alone, end to end: EnCodec in, every window decoded, EnCodec out."""
    import numpy as np

    from models.engine import EditEngine, EditRequest
    from models.sampling import SamplingParams
    engine = EditEngine(model, _config(max_batch_size=1))
    t = np.arange(int(32000 * seconds)) / 32000
    wav = (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.25 * t))
           ).astype(np.float32)[None]
    engine.start()
    try:
        _sync(model.device)
        begin = time.perf_counter()
        out = engine.submit(EditRequest("song", wav, 32000, TEMPLATES[0],
                                        SamplingParams(seed=1))).result(timeout=3600)
        _sync(model.device)
        elapsed = time.perf_counter() - begin
    finally:
        engine.stop()
    report.measure("song_seconds", seconds, "s of audio")
    report.measure("song_latency_seconds", elapsed, "s")
    report.check("3-minute song alone", out.audio.shape[-1] == wav.shape[-1],
                 f"{seconds:g} s of audio edited in {elapsed:.1f} s ({engine.steps_total} steps, "
                 f"{seconds / elapsed:.2f}x real time)")


if __name__ == "__main__":
    sys.exit(main())
