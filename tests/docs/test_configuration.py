"""docs/configuration.md stays true: its table lists every setting with its default."""
from __future__ import annotations

import re
from pathlib import Path

from musicedit.settings import Settings

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _default(field) -> str:
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "(none)"
    return "(unset)" if value is None else str(value)


def test_configuration_table_matches_settings():
    text = CONFIGURATION.read_text()
    rows = dict(re.findall(r"^\| `(MUSICEDIT_[A-Z0-9_]+)` \| `([^`]*)` \|", text, flags=re.M))
    expected = {f"MUSICEDIT_{name.upper()}": _default(field)
                for name, field in Settings.model_fields.items()}
    assert rows == expected
