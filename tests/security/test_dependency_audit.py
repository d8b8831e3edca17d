"""`pip-audit` of the locked dependencies (requirements/lock.txt, torch.txt, audiocraft.txt).

Any known vulnerability fails the test unless it is in `ACCEPTED` (and justified in
docs/security.md). pip-audit's PyPI service reads `https://pypi.org/pypi/<name>/<version>/json`;
where that answers 404 for every package (a mirror serving only the project-level JSON, as on
this project's machines) pip-audit marks each package "not found on PyPI", prints "No known
vulnerabilities found" and exits 0. That is no audit at all, so the test reports it as a skip
that names the cause instead of passing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCKED = [REPO / "requirements" / name for name in ("lock.txt", "torch.txt", "audiocraft.txt")]
PIP_AUDIT = Path(sys.executable).parent / "pip-audit"
SECURITY_DOC = REPO / "docs" / "security.md"

# Vulnerability id -> why it does not affect musicedit. Keep docs/security.md in step.
ACCEPTED: dict[str, str] = {}


def run_pip_audit(tmp_path: Path) -> tuple[int, dict, str]:
    args = [str(PIP_AUDIT), "--no-deps", "--disable-pip", "--progress-spinner", "off",
            "--format", "json", "--output", str(tmp_path / "audit.json"),
            "--cache-dir", str(tmp_path / "cache")]
    for path in LOCKED:
        args += ["--requirement", str(path)]
    for vuln_id in ACCEPTED:
        args += ["--ignore-vuln", vuln_id]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    report_path = tmp_path / "audit.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return done.returncode, report, done.stderr


def test_accepted_findings_are_documented():
    text = SECURITY_DOC.read_text()
    for vuln_id in ACCEPTED:
        assert vuln_id in text, f"{vuln_id} is accepted in the test but not in docs/security.md"


def test_locked_dependencies_have_no_known_vulnerabilities(tmp_path: Path):
    code, report, stderr = run_pip_audit(tmp_path)
    dependencies = report.get("dependencies", [])
    if not dependencies:
        if re.search(r"ConnectionError|NameResolutionError|Max retries|timed out", stderr):
            pytest.skip("pip-audit could not reach its vulnerability service: "
                        + stderr.strip().splitlines()[-1][:300])
        pytest.fail(f"pip-audit failed (exit {code}): {stderr[-2000:]}")
    audited = [d for d in dependencies if not d.get("skip_reason")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    if not audited:
        pytest.skip(
            f"pip-audit audited 0 of {len(dependencies)} locked packages: the advisory source is "
            "unreachable from this machine (PyPI's per-version JSON API "
            "https://pypi.org/pypi/<name>/<version>/json answers 404, e.g. "
            f"'{skipped[0]['skip_reason']}'); run it where PyPI's JSON API or api.osv.dev "
            "is reachable (docs/security.md)")
    findings = [f"{d['name']}=={d['version']}: {v['id']} (fixed in "
                f"{', '.join(v.get('fix_versions') or ['-'])})"
                for d in audited for v in d.get("vulns", []) if v["id"] not in ACCEPTED]
    assert not findings, "known vulnerabilities in locked dependencies:\n" + "\n".join(findings)
    # packages that exist on PyPI are all audited; only a package missing there may be skipped
    assert len(skipped) <= 1, [d["skip_reason"] for d in skipped]
    assert code == 0, stderr[-2000:]
