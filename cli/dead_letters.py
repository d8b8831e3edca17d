"""`musicedit dead-letters list|show|requeue|purge`: the operator's view of jobs failed for
good, in the job store the `MUSICEDIT_*` settings name (`musicedit.job_store.dead_letters`)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from musicedit.errors import MusiceditError
from musicedit.jobs import EditJob
from musicedit.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dead-letters", help="list, show, requeue or delete dead letters (jobs failed for good "
        "after MAX_ATTEMPTS abandoned attempts or a model/storage fault; configure with "
        "MUSICEDIT_* variables)")
    actions = parser.add_subparsers(dest="action", required=True)
    list_parser = actions.add_parser("list", help="newest first")
    list_parser.add_argument("--limit", type=int, default=100)
    list_parser.add_argument("--json", action="store_true", help="full records as JSON")
    for action, text in (("show", "print one dead letter's full record as JSON"),
                         ("requeue", "queue it again as a fresh job (after fixing the cause)"),
                         ("purge", "delete it and its stored input now")):
        action_parser = actions.add_parser(action, help=text)
        action_parser.add_argument("job_id")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # imported here: every command's module is imported to build the parser
    from musicedit.job_store import dead_letters, make_job_store
    from musicedit.queue import make_celery
    from musicedit.storage import make_storage

    settings = Settings()
    store = make_job_store(settings)
    try:
        if args.action == "list":
            _print_list(store.dead_letters(limit=args.limit), args.json,
                        settings.dead_letter_retention_seconds)
        elif args.action == "show":
            print(dead_letters.get_dead_letter(store, args.job_id).model_dump_json(indent=2))
        elif args.action == "requeue":
            job = dead_letters.requeue_dead_letter(store, make_storage(settings),
                                                   make_celery(settings), args.job_id)
            print(f"requeued {job.id}; follow it with GET /v1/edits/{job.id}")
        else:
            dead_letters.purge_dead_letter(store, make_storage(settings), args.job_id)
            print(f"deleted {args.job_id} and its stored objects")
        return 0
    except MusiceditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _print_list(jobs: list[EditJob], as_json: bool, retention_seconds: float) -> None:
    if as_json:
        print(json.dumps([job.model_dump(mode="json") for job in jobs], indent=2))
        return
    print(f"{len(jobs)} dead letter(s) (kept {retention_seconds / 86400:g} days after they fail)")
    for job in jobs:
        when = datetime.datetime.fromtimestamp(
            job.timings.finished_at or 0, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        error = (job.error or "").replace("\n", " ")
        print(f"{job.id}  {when}Z  owner={job.owner}  attempts={job.attempts}  "
              f"{job.instruction.text!r}  input={job.input_key}\n    {error}")
