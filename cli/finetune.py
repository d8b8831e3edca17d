"""`musicedit finetune`: train the adapters (audio fusion + text LoRA) on new or old stems.

Parses the options and calls `models.training.run.run_finetune`; the result is a model
directory that `--model DIR` and `MUSICEDIT_MODEL=DIR` load, with its stems in
`musicedit.json`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model_args import add_model_args, csv, device, model_cache_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="train the adapters on stems (MusicGen stays frozen)",
        description="Finetune Instruct-MusicGen's audio fusion and text LoRA with the authors' "
        "recipe on synthesized stems or a local Slakh2100 / MUSDB18-HQ copy. Interrupted runs "
        "resume from the run directory's checkpoint.")
    add_model_args(p)
    p.add_argument("--output", type=Path, required=True,
                   help="model directory to write (finetuned.ckpt, musicedit.json, links)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="checkpoints and encoded data (default <output>/run; resumes from it)")
    p.add_argument("--data", choices=("synth", "slakh", "musdb"), default="synth")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="local Slakh2100 or MUSDB18-HQ directory (for --data slakh|musdb)")
    p.add_argument("--stems", type=csv, default=None, help="stems to train (default: the "
                   "release's four for synth, every stem of the data otherwise)")
    p.add_argument("--tasks", type=csv, default=("add", "remove", "extract"))
    p.add_argument("--train-examples", type=int, default=512)
    p.add_argument("--held-out-examples", type=int, default=48)
    p.add_argument("--seconds", type=float, default=5.0, help="clip length (default 5)")
    p.add_argument("--from-scratch", action="store_true",
                   help="start from a fresh adapter (zero gates) instead of the model's")
    p.add_argument("--steps", type=int, default=5000, help="optimizer steps (default 5000)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--grad-clip", type=float, default=2.0)
    p.add_argument("--text-dropout", type=float, default=0.3)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast on CUDA, float32 on the CPU")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soundfont", type=Path, default=None)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.checkpoint import CheckpointError
    from models.evaluation.examples import NoExamples
    from models.evaluation.stem_sets import StemSetError, stem_name
    from models.evaluation.synth import SOUNDFONT, SynthesisError
    from models.training.loop import FinetuneConfig
    from models.training.run import FinetuneSettings, run_finetune

    config = FinetuneConfig(
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
        text_dropout=args.text_dropout, precision=args.precision, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed)
    settings = FinetuneSettings(
        output=args.output, model=args.model, cache_dir=model_cache_dir(args),
        device=device(args), run_dir=args.run_dir, data=args.data, data_dir=args.data_dir,
        stems=tuple(stem_name(s) for s in args.stems) if args.stems else None,
        tasks=tuple(t.lower() for t in args.tasks), train_examples=args.train_examples,
        held_out_examples=args.held_out_examples, seconds=args.seconds,
        from_scratch=args.from_scratch, soundfont=args.soundfont or SOUNDFONT, config=config)
    try:
        directory, state = run_finetune(settings, lambda total, what: tqdm(
            total=total, desc=what, file=sys.stderr, mininterval=1.0))
    except (CheckpointError, FileNotFoundError, NoExamples, StemSetError, SynthesisError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first, last = state.held_out[0], state.held_out[-1]
    print(f"held-out loss {first.loss:.3f} -> {last.loss:.3f}, token accuracy "
          f"{first.accuracy:.3f} -> {last.accuracy:.3f} after {state.step} steps")
    print(f"wrote {directory}: serve it with MUSICEDIT_MODEL={directory} (stems in "
          f"{directory / 'musicedit.json'})")
    return 0
