"""Imports run one way, as the README's layout table says: `cli` above every package,
`service` and `worker` above `musicedit`, `models` below the service's layers, and the shared
package importing none of the others."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# package -> the project packages (and heavy libraries) it must never import
FORBIDDEN = {
    "musicedit": {"cli", "local_stack", "models", "service", "worker", "torch"},
    "service": {"cli", "local_stack", "models", "worker", "torch"},
    "worker": {"cli", "local_stack", "service"},
    "models": {"cli", "local_stack", "service", "worker"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str):
    wrong = {str(path.relative_to(REPO)): sorted(_imported_packages(path) & FORBIDDEN[package])
             for path in sorted((REPO / package).rglob("*.py"))}
    assert {name: found for name, found in wrong.items() if found} == {}


def test_nothing_puts_the_repository_on_sys_path():
    """Tests and benchmarks import the project as a package (pyproject's pythonpath and the
    editable install), never by editing `sys.path`."""
    offenders = [str(path.relative_to(REPO)) for folder in ("tests", "bench", "local_stack")
                 for path in (REPO / folder).rglob("*.py")
                 if "sys.path" in path.read_text() and path != Path(__file__)]
    assert offenders == []
