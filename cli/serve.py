"""`musicedit serve`: the gateway and one worker on this machine."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the gateway and one worker here (embedded defaults: no Redis, S3 or "
        "GPU needed; configure with MUSICEDIT_* variables)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from musicedit.settings import Settings
    from service.embedded import serve

    return serve(Settings())
