"""`musicedit` command line: edit a file offline, run the service, run a worker.

Model code (torch) is imported only by the commands that need it, so the gateway's image can
install this package without torch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="tiny | small-random | large | a model directory (default: tiny)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where random presets are written (default ~/.cache/musicedit/models)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def _edit(args: argparse.Namespace) -> int:
    import torch

    from models.audio import read_audio, write_audio
    from models.loader import load_model
    from models.presets import resolve_model
    from models.reference import DEFAULT_STEMS, edit
    from models.sampling import SamplingParams
    from musicedit.audio_probe import AudioLimits, probe_audio
    from musicedit.errors import MusiceditError

    limits = AudioLimits(min_seconds=0.05, max_seconds=float("inf"), max_sample_rate=768_000,
                         max_channels=64, silence_peak_threshold=1e-4)
    try:
        info = probe_audio(args.input, limits)
    except (MusiceditError, OSError) as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    model = load_model(resolve_model(args.model, args.cache_dir), device=device)
    loaded = time.perf_counter()
    wav, rate = read_audio(args.input)
    params = SamplingParams(seed=args.seed, top_k=args.top_k, top_p=args.top_p,
                            temperature=args.temperature, cfg_coef=args.cfg)
    try:
        result = edit(model, wav, rate, args.instruction, params, stems=DEFAULT_STEMS)
    except (ValueError, MusiceditError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_rate = info.sample_rate if args.keep_rate else None
    fmt = args.format or ("flac" if args.output.suffix.lower() == ".flac" else "wav")
    write_audio(args.output, result.audio, model.sample_rate, fmt, output_rate=out_rate)
    done = time.perf_counter()
    print(f"{args.output}: {info.duration_seconds:.2f} s edited with '{result.instruction}' "
          f"(model load {loaded - started:.1f} s, edit {done - loaded:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="musicedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    edit_p = sub.add_parser("edit", help="edit one audio file offline")
    edit_p.add_argument("input", type=Path, help="WAV, FLAC, OGG or MP3 file")
    edit_p.add_argument("instruction", help='for example "Add drums", "Remove the bass", "Only guitar"')
    edit_p.add_argument("-o", "--output", type=Path, required=True, help="output .wav or .flac")
    _add_model_args(edit_p)
    edit_p.add_argument("--seed", type=int, default=0)
    edit_p.add_argument("--top-k", type=int, default=100)
    edit_p.add_argument("--top-p", type=float, default=0.0)
    edit_p.add_argument("--temperature", type=float, default=1.0)
    edit_p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient")
    edit_p.add_argument("--format", choices=["wav", "flac"], default=None,
                        help="output format (default: from the output file's extension)")
    edit_p.add_argument("--keep-rate", action="store_true",
                        help="write at the input's sample rate instead of 32 kHz")
    edit_p.set_defaults(func=_edit)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
