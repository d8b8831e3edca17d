"""The README stays true: its configuration table lists every setting with its default."""
from __future__ import annotations

import re
from pathlib import Path

from musicedit.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _default(field) -> str:
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "(none)"
    return "(unset)" if value is None else str(value)


def test_configuration_table_matches_settings():
    text = README.read_text()
    rows = dict(re.findall(r"^\| `(MUSICEDIT_[A-Z0-9_]+)` \| `([^`]*)` \|", text, flags=re.M))
    expected = {f"MUSICEDIT_{name.upper()}": _default(field)
                for name, field in Settings.model_fields.items()}
    assert rows == expected


def test_readme_commands_exist():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("serve", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
