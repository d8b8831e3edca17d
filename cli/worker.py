"""`musicedit worker`: a Celery worker with the model, configured by `MUSICEDIT_*` variables."""

from __future__ import annotations

import argparse

from musicedit.logs import configure_logging
from musicedit.settings import get_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker", help="run a Celery worker with the model (configure with MUSICEDIT_* variables)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    from worker.app import run_worker  # loads torch; the gateway never imports this

    run_worker(settings)
    return 0
