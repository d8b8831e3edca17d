"""`musicedit eval`: measure edit quality with the paper's metrics (Table 2's shape).

Parses the options and calls `models.evaluation.run.run_evaluation`; prints the table and
where the Markdown, JSON and plot were written.
"""
from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from .model_args import add_model_args, csv, device, model_cache_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="measure edit quality (SI-SDR, SI-SDRi, SSIM; FAD, CLAP, KL with local "
        "metric models)",
        description="Edit add/remove/extract examples with the batched engine (and, with "
        "--separator, remove/extract on the separation engine) and score them "
        "like the paper's Table 2. Examples are synthesized with FluidSynth unless --data "
        "names a local Slakh2100 or MUSDB18-HQ copy; nothing is downloaded.")
    add_model_args(p)
    p.add_argument("--examples", type=int, default=50, help="examples in all (default 50), "
                   "spread evenly over tasks and stems")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length (default 5, the "
                   "model's training window)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the sampling")
    p.add_argument("--data", choices=("synth", "slakh", "musdb"), default="synth")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="local Slakh2100 or MUSDB18-HQ directory (for --data slakh|musdb)")
    p.add_argument("--split", default="test", help="split folder of --data-dir (default test)")
    p.add_argument("--stems", type=csv, default=None,
                   help="comma-separated stems to edit (default: all the model's stems)")
    p.add_argument("--tasks", type=csv, default=("add", "remove", "extract"))
    p.add_argument("--sample-rate", type=int, default=32000,
                   help="examples' rate (32000; 44100 for stereo material)")
    p.add_argument("--channels", type=int, choices=(1, 2), default=1)
    p.add_argument("--batch-size", type=int, default=8, help="jobs decoded together")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient")
    p.add_argument("--clap-model", type=Path, default=None,
                   help="local transformers CLAP directory (enables CLAP and FAD)")
    p.add_argument("--kl-model", type=Path, default=None,
                   help="local transformers AudioSet classifier directory (enables KL)")
    p.add_argument("--soundfont", type=Path, default=None, help="General MIDI .sf2 for --data "
                   "synth (default: the fluid-soundfont-gm file)")
    p.add_argument("--separator", default="none",
                   help="also run the remove and extract examples on this source separator "
                   "(tiny | htdemucs_6s-random | htdemucs_6s | a Demucs .th file; default none): "
                   "the service's separation route, scored on the same examples")
    p.add_argument("--output", type=Path, default=None,
                   help="report directory (default var/eval/<UTC time>)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.checkpoint import CheckpointError
    from models.evaluation.examples import NoExamples
    from models.evaluation.pretrained import PretrainedModelError
    from models.evaluation.run import EvalSettings, run_evaluation
    from models.evaluation.stem_sets import StemSetError, stem_name
    from models.evaluation.synth import SOUNDFONT, SynthesisError
    from models.sampling import SamplingParams

    output = args.output or Path("var/eval") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    settings = EvalSettings(
        model=args.model, separator=args.separator, cache_dir=model_cache_dir(args),
        device=device(args),
        examples=args.examples, seconds=args.seconds, seed=args.seed, data=args.data,
        data_dir=args.data_dir, split=args.split,
        stems=tuple(stem_name(s) for s in args.stems) if args.stems else None,
        tasks=tuple(t.lower() for t in args.tasks), sample_rate=args.sample_rate,
        channels=args.channels, batch_size=args.batch_size,
        sampling=SamplingParams(seed=args.seed, top_k=args.top_k, top_p=args.top_p,
                                temperature=args.temperature, cfg_coef=args.cfg),
        clap_model=args.clap_model, kl_model=args.kl_model,
        soundfont=args.soundfont or SOUNDFONT, output=output)
    if settings.examples < 1:
        print("error: --examples must be at least 1", file=sys.stderr)
        return 2
    try:
        report, paths = run_evaluation(
            settings, lambda total, what: tqdm(total=total, desc=what, unit="ex", file=sys.stderr))
    except (CheckpointError, NoExamples, PretrainedModelError, StemSetError, SynthesisError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
