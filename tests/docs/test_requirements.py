"""The pinned requirement files describe the environment the tests run in.

A package that is installed in the development venv but pinned nowhere works on the machine
that installed it by hand and breaks `make setup` on a fresh one (CI once failed on exactly
that: audiocraft imports torchmetrics, which was installed here but missing from lock.txt).
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
# Installed by `make setup` itself or by pip/venv, not by a requirement file.
NOT_PINNED = {"pip", "setuptools", "wheel", "musicedit"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
            if match:
                pins[_canonical(match.group(1))] = match.group(3)
    return pins


def _pinned_by_pinned_packages(pins: dict[str, str]) -> set[str]:
    """Distributions that a pinned package itself requires at an exact version (torch pins its
    CUDA wheels and triton exactly, per platform), so they are pinned transitively."""
    covered = set()
    for name in pins:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*==", requirement)
            if match:
                covered.add(_canonical(match.group(1)))
    return covered


def test_every_installed_distribution_is_pinned():
    pins = _pins()
    covered = set(pins) | _pinned_by_pinned_packages(pins) | NOT_PINNED
    installed = {_canonical(dist.metadata["Name"]) for dist in metadata.distributions()
                 if dist.metadata["Name"]}
    unpinned = sorted(installed - covered)
    assert not unpinned, f"installed but pinned in no requirements/*.txt file: {unpinned}"


def test_pins_match_installed_versions():
    pins = _pins()
    mismatched = []
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # platform-specific or optional pins (e.g. CUDA wheels) may be absent
        # torch's local version label (+cu128, +cpu) is not part of the pin.
        if installed.split("+", 1)[0] != version.split("+", 1)[0]:
            mismatched.append(f"{name}: pinned {version}, installed {installed}")
    assert not mismatched, mismatched


@pytest.mark.parametrize("module", ["audiocraft", "torchmetrics", "demucs.htdemucs", "service",
                                    "worker", "models"])
def test_runtime_imports(module):
    __import__(module)
