"""The README and docs/ stay a short front door with documents behind it: the two commands
exist, CI runs the linters before the tests, and every link points at a file (and heading)
inside the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_commands_exist():
    text = README.read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("serve", "test", "lint"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    assert ci.index("make lint") < ci.index("make test")


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_links_point_inside_the_repository(document: Path):
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target):  # a web address
            continue
        file_part, _, anchor = target.partition("#")
        path = (document.parent / file_part).resolve() if file_part else document
        assert path.is_relative_to(REPO), f"{document.name}: {target} leaves the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{document.name}: no heading for {target}"
