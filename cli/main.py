"""`musicedit`: edit a file offline, run the service, run a worker, handle dead letters."""

from __future__ import annotations

import argparse
import sys

from cli import dead_letters, edit, serve, worker

COMMANDS = (edit, serve, worker, dead_letters)


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
