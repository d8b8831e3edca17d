"""`musicedit`: edit a file offline, run the service or a worker, handle dead letters, measure
edit quality (`eval`) and train adapters for new stems (`finetune`)."""

from __future__ import annotations

import argparse
import sys

from cli import dead_letters, edit, finetune, serve, worker
from cli import eval as eval_command

COMMANDS = (edit, serve, worker, dead_letters, eval_command, finetune)


def build_parser() -> argparse.ArgumentParser:
    """The `musicedit` parser with one subcommand per module of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="musicedit", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the command; its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
