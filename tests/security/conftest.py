"""The fixtures of `tests/reliability/conftest.py` (gateway process, worker processes, ...),
loaded by path and re-exported: every conftest module is named `conftest`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "musicedit_reliability_conftest"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        _NAME, Path(__file__).resolve().parents[1] / "reliability" / "conftest.py")
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
_reliability = sys.modules[_NAME]

model_cache = _reliability.model_cache
start_worker = _reliability.start_worker
start_gateway_process = _reliability.start_gateway_process
