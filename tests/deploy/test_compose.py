"""docker-compose.yml (+ the CPU override) is valid and sets only real settings."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from deploy_files import REPO, check_settings_env, load_compose, tool

ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"


def compose_config(*files, extra_env: dict[str, str] | None = None,
                   profiles: tuple[str, ...] = ()) -> dict:
    """`docker compose config` (no daemon needed) with the example .env, as a dict."""
    args = [tool("docker-compose"), "--project-directory", str(REPO), "--env-file",
            str(ENV_EXAMPLE)]
    for path in files:
        args += ["-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    # an empty environment: only the example .env may fill in the variables
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", **(extra_env or {})},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, CPU_OVERRIDE)], ids=["gpu", "cpu"])
def test_compose_config_is_valid(files):
    args = [tool("docker-compose"), "--project-directory", str(REPO), "--env-file",
            str(ENV_EXAMPLE)]
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run([*args, "config", "--quiet"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr


def test_secrets_are_required_not_defaulted():
    args = [tool("docker-compose"), "--project-directory", str(REPO), "-f", str(COMPOSE),
            "config", "--quiet"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert result.returncode != 0
    assert "MUSICEDIT_API_KEYS" in result.stderr or "MINIO_ROOT" in result.stderr


def test_environment_variables_are_settings_fields():
    """Raw file (what people edit) and resolved config: only Settings fields, valid values."""
    raw = load_compose(COMPOSE)
    for name in ("gateway", "worker"):
        env = raw["services"][name]["environment"]
        assert all(key.startswith("MUSICEDIT_") for key in env), env
    for files in [(COMPOSE,), (COMPOSE, CPU_OVERRIDE)]:
        resolved = compose_config(*files)
        for name in ("gateway", "worker"):
            check_settings_env(resolved["services"][name]["environment"], f"compose {name}")
    cpu = load_compose(CPU_OVERRIDE)
    check_settings_env(cpu["services"]["worker"]["environment"], "docker-compose.cpu.yml")


def test_gpu_worker_and_cpu_override():
    gpu = compose_config(COMPOSE)["services"]["worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any(v["target"] == "/models" for v in gpu["volumes"])
    two = compose_config(COMPOSE, extra_env={"WORKER_GPU_COUNT": "2"})["services"]["worker"]
    assert two["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2

    cpu = compose_config(COMPOSE, CPU_OVERRIDE)["services"]["worker"]
    assert "devices" not in json.dumps(cpu.get("deploy", {}))
    assert cpu["environment"]["MUSICEDIT_MODEL"] == "tiny"
    assert cpu["environment"]["MUSICEDIT_DEVICE"] == "cpu"


def test_stack_services():
    services = compose_config(COMPOSE)["services"]
    assert {"gateway", "worker", "redis", "minio", "createbuckets", "prometheus",
            "grafana"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert redis["healthcheck"]["test"][-1] == "ping"
    assert services["createbuckets"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("gateway", "worker"):
        depends = services[name]["depends_on"]
        assert depends["createbuckets"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        assert services[name]["healthcheck"]["test"][-1] == name
    env = services["gateway"]["environment"]
    assert env["MUSICEDIT_S3_ENDPOINT_URL"] == "http://minio:9000"
    # clients follow presigned redirects to a host they can reach, on a published port
    public_s3 = env["MUSICEDIT_S3_PUBLIC_ENDPOINT_URL"]
    assert public_s3 == "http://localhost:9000"
    assert any(p["target"] == 9000 and p["published"] == "9000" for p in services["minio"]["ports"])
    # workers send webhooks too: their links point at the gateway's public address
    for name in ("gateway", "worker"):
        assert services[name]["environment"]["MUSICEDIT_PUBLIC_BASE_URL"] == "http://localhost:8000"
    assert env["MUSICEDIT_JOB_STORE_URL"].startswith("redis://redis:6379")


def test_prometheus_scrapes_the_ports_the_services_listen_on():
    services = compose_config(COMPOSE)["services"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["dns_sd_configs"][0] for job in config["scrape_configs"]}
    gateway, worker = targets["musicedit-gateway"], targets["musicedit-worker"]
    assert gateway["names"] == ["gateway"] and worker["names"] == ["worker"]
    assert gateway["port"] == int(services["gateway"]["environment"]["MUSICEDIT_PORT"])
    assert worker["port"] == int(services["worker"]["environment"]["MUSICEDIT_WORKER_METRICS_PORT"])
    assert services["worker"]["environment"]["MUSICEDIT_WORKER_METRICS_HOST"] == "0.0.0.0"


def test_separation_pool_profile_runs_the_separator_alone_on_the_cpu():
    base = compose_config(COMPOSE)["services"]
    assert "separation-worker" not in base  # only with --profile separation-pool
    assert base["worker"]["environment"]["MUSICEDIT_WORKER_ROLE"] == "all"
    services = compose_config(COMPOSE, profiles=("separation-pool",))["services"]
    pool = services["separation-worker"]
    env = pool["environment"]
    assert env["MUSICEDIT_WORKER_ROLE"] == "separation" and env["MUSICEDIT_DEVICE"] == "cpu"
    assert env["MUSICEDIT_SEPARATOR"] == services["worker"]["environment"]["MUSICEDIT_SEPARATOR"]
    assert "devices" not in json.dumps(pool.get("deploy", {}))
    check_settings_env(env, "compose separation-worker")
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["dns_sd_configs"][0] for job in config["scrape_configs"]}
    scraped = targets["musicedit-separation-worker"]
    assert scraped["names"] == ["separation-worker"]
    assert scraped["port"] == int(env["MUSICEDIT_WORKER_METRICS_PORT"])
