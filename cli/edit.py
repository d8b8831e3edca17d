"""`musicedit edit`: edit one audio file offline (`models.file_edit.edit_file`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.model_args import add_model_args, model_cache_dir
from musicedit.jobs import OUTPUT_MEDIA_TYPES, SamplingParams
from musicedit.routing import ENGINE_CHOICES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("edit", help="edit one audio file offline")
    parser.add_argument("input", type=Path, help="WAV, FLAC, OGG or MP3 file")
    parser.add_argument("instruction",
                        help='for example "Add drums", "Remove the bass", "Only guitar", '
                        '"Replace the guitar with piano", "Remove the bass, then add drums"')
    extensions = " or ".join(f".{name}" for name in OUTPUT_MEDIA_TYPES)
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help=f"output file: {extensions} (the extension sets the format)")
    add_model_args(parser)
    defaults = SamplingParams()  # the API's defaults (the paper's), without importing torch
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--cfg", type=float, default=defaults.cfg_coef,
                        help="classifier-free guidance coefficient")
    parser.add_argument("--start", type=float, default=None, metavar="SECONDS",
                        help="edit only from here (default: the start)")
    parser.add_argument("--end", type=float, default=None, metavar="SECONDS",
                        help="edit only up to here (default: the end); the rest is the input")
    parser.add_argument("--output-rate", type=int, default=None, metavar="HZ",
                        help="sample rate of the result (default: the input's)")
    parser.add_argument("--output-channels", type=int, choices=(1, 2), default=None,
                        help="channels of the result (default: the input's)")
    parser.add_argument("--separator", default="tiny",
                        help="source separator for remove/extract: tiny | htdemucs_6s-random | "
                        "htdemucs_6s | a Demucs .th file | none (default: tiny)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                        help="auto: add on the generative model, remove/extract on the "
                        "separator where it knows the stem; or force one engine")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="longest input accepted (default 300 s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.file_edit import FileEditRefused, edit_file  # loads torch
    from models.sampling import SamplingParams as EngineParams

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} frames", end="", file=sys.stderr, flush=True)

    params = EngineParams(seed=args.seed, top_k=args.top_k, top_p=args.top_p,
                          temperature=args.temperature, cfg_coef=args.cfg)
    try:
        edited = edit_file(
            args.input, args.instruction, args.output, model=args.model,
            cache_dir=model_cache_dir(args), params=params,
            device=args.device, separator=args.separator, engine=args.engine,
            start_seconds=args.start, end_seconds=args.end,
            output_rate=args.output_rate, output_channels=args.output_channels,
            max_seconds=args.max_seconds,
            on_progress=progress)
    except FileEditRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(f"{edited.path}: {edited.input_seconds:.2f} s edited with '{edited.instruction}' "
          f"on {'+'.join(dict.fromkeys(edited.engines))} "
          f"(model load {edited.load_seconds:.1f} s, edit {edited.edit_seconds:.1f} s)")
    return 0
