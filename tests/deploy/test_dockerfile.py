"""The Dockerfile lints clean, has both targets, runs as non-root, and the gateway is torch-free."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from deploy_files import REPO, check_settings_env, tool

DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """Instructions (continuation lines joined) of each `FROM ... AS name` stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if match:
            current = match.group(1)
            result[current] = []
        elif current:
            result[current].append(line)
    return result


def pins(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_hadolint_passes():
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_non_root_healthcheck_no_secrets():
    found = stages()
    assert {"gateway", "worker"} <= set(found)
    for name in ("gateway", "worker"):
        lines = found[name]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root")
        assert any(line.startswith("HEALTHCHECK ") for line in lines)
        assert any(line.startswith("CMD ") for line in lines)
    assert any(line.startswith("VOLUME") and "/models" in line for line in found["worker"])
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ENV|ARG)\b.*(PASSWORD|SECRET|API_KEYS|ACCESS_KEY)", text, re.M)


def test_image_env_is_settings():
    for name, lines in stages().items():
        env = {}
        for line in lines:
            if line.startswith("ENV "):
                env.update(re.findall(r"(\w+)=(\S+)", line))
        check_settings_env(env, f"Dockerfile stage {name}")


def test_worker_uses_the_ci_recipe_and_gateway_does_not():
    worker_build = " ".join(stages()["worker-build"])
    order = [worker_build.index(part) for part in (
        "requirements/torch.txt", "--no-deps -r /tmp/requirements/audiocraft.txt",
        "-c /tmp/requirements/torch.txt")]
    assert order == sorted(order)
    gateway = " ".join(stages()["gateway-build"] + stages()["gateway"])
    assert "torch" not in gateway and "models/" not in gateway and "worker/" not in gateway
    assert "nvidia/cuda:12.8" in DOCKERFILE.read_text()


def test_gateway_requirements_are_the_lock_file_pins_without_torch():
    gateway = pins(REPO / "requirements" / "gateway.txt")
    lock = pins(REPO / "requirements" / "lock.txt")
    assert {name: lock.get(name) for name in gateway} == gateway
    assert not {"torch", "torchaudio", "xformers", "audiocraft", "transformers"} & set(gateway)


def test_gateway_imports_only_gateway_requirements():
    """Build the app in a fresh interpreter: every third-party module it loads comes from
    requirements/gateway.txt, and torch is never imported."""
    script = """
import importlib.metadata as md, json, sys
from musicedit.settings import Settings
from service.app import create_app
import uvicorn.main, kombu.transport.redis
create_app(Settings(data_dir=sys.argv[1], job_store_url="redis://127.0.0.1:1/0",
                    broker_url="redis://127.0.0.1:1/0"))
dists = md.packages_distributions()
used = sorted({d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])})
print(json.dumps({"torch": "torch" in sys.modules, "dists": used}))
"""
    import tempfile

    with tempfile.TemporaryDirectory() as data_dir:
        result = subprocess.run([sys.executable, "-c", script, data_dir], capture_output=True,
                                text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    allowed = set(pins(REPO / "requirements" / "gateway.txt")) | {"musicedit"}
    used = {re.sub(r"[-_.]+", "-", name).lower() for name in report["dists"]}
    # optional accelerators that libraries import only if present (not needed by the gateway)
    optional = {"brotli", "pyyaml", "msgpack", "rich", "markdown-it-py", "mdurl", "pygments",
                "greenlet", "setuptools", "zstandard", "packaging",
                # httpcore imports trio (and trio its dependencies) when it is installed, as
                # selenium installs it for the browser tests; the gateway image has none
                "trio", "outcome", "sortedcontainers", "attrs", "sniffio"}
    assert used - allowed - optional == set()


@pytest.mark.parametrize("bad", [{"MUSICEDIT_NOT_A_SETTING": "1"}, {"MUSICEDIT_PORT": "web"}])
def test_env_check_rejects_unknown_names_and_bad_values(bad):
    with pytest.raises((AssertionError, ValueError)):
        check_settings_env(bad, "example")
