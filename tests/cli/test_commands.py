"""Every `musicedit` subcommand is reachable from the installed entry point."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cli.main import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_parses_to_its_run_function(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    assert callable(sub.get_default("run")), f"`musicedit {command}` has no run function"


def test_the_entry_point_runs_eval_and_finetune():
    """What a user types: `musicedit eval ...` once crashed with "Namespace has no attribute
    run" while the tests called the module's run() directly."""
    for argv, message in ((["eval", "--examples", "0"], "--examples must be at least 1"),
                          (["finetune", "--help"], "usage: musicedit finetune")):
        done = subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True,
                              text=True, timeout=120)
        assert message in done.stdout + done.stderr, (argv, done.stderr[-2000:])
