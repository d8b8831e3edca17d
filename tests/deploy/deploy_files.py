"""Shared helpers for the deployment validation tests (no Docker daemon, no cluster)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Path of a CLI from requirements/dev.txt (next to the interpreter, or on PATH)."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: pip install -r requirements/dev.txt")
    return found


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def settings_fields() -> set[str]:
    from musicedit.settings import Settings

    return {f"MUSICEDIT_{name.upper()}" for name in Settings.model_fields}


def check_settings_env(env: dict[str, str], where: str) -> None:
    """Every MUSICEDIT_* variable is a Settings field and the values parse as Settings."""
    from musicedit.settings import Settings

    names = {name for name in env if name.startswith("MUSICEDIT_")}
    unknown = names - settings_fields()
    assert not unknown, f"{where} sets variables that Settings does not read: {sorted(unknown)}"
    values = {name.removeprefix("MUSICEDIT_").lower(): str(value) for name, value in env.items()
              if name.startswith("MUSICEDIT_")}
    # raises ValidationError with the field name if a value does not parse
    Settings.model_validate({k: v for k, v in values.items()})


class ComposeLoader(yaml.SafeLoader):
    """PyYAML plus compose's `!reset` / `!override` merge tags (kept as plain values)."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        _tag, lambda loader, node: (loader.construct_mapping(node)
                                    if isinstance(node, yaml.MappingNode)
                                    else loader.construct_object(node)))


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 (SafeLoader subclass)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
