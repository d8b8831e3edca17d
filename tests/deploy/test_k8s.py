"""Kubernetes manifests: valid against the Kubernetes schemas; KEDA objects well formed and
wired to the real Celery queue; every setting a Settings field."""

from __future__ import annotations

import json

import pytest
import yaml
from deploy_files import REPO, check_settings_env, load_yaml_documents

K8S = REPO / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")

# The parts of KEDA's v1alpha1 CRDs (keda 2.x) these manifests rely on: there is no KEDA
# schema offline, so structure and required fields are checked here.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer"},
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {"type": "object",
                                         "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        }}},
            }},
    },
}
TRIGGER_AUTH_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {"type": "object", "properties": {"secretTargetRef": {
            "type": "array", "items": {"type": "object", "required": ["parameter", "name", "key"],
                                       "additionalProperties": False,
                                       "properties": {"parameter": {"type": "string"},
                                                      "name": {"type": "string"},
                                                      "key": {"type": "string"}}}}}},
    },
}
# KEDA redis scaler (https://keda.sh/docs/latest/scalers/redis-lists/) metadata keys
REDIS_SCALER_KEYS = {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
                     "listName", "listLength", "activationListLength", "databaseIndex",
                     "enableTLS", "unsafeSsl", "usernameFromEnv", "passwordFromEnv"}


def all_objects() -> list[dict]:
    return [doc for path in MANIFESTS for doc in load_yaml_documents(path)]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in all_objects() if doc["kind"] == kind}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_builtin_kinds_validate_against_kubernetes_schemas(path):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install -r requirements/dev.txt")
    for doc in load_yaml_documents(path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        # strict: unknown fields (typos) fail too; raises ValidationError with the path
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_keda_objects_are_well_formed_and_scale_the_worker_on_the_celery_queue():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install -r requirements/dev.txt")
    from musicedit.queue import EDIT_QUEUE

    scaled = by_kind("ScaledObject")["musicedit-worker"]
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    auths = by_kind("TriggerAuthentication")
    for auth in auths.values():
        jsonschema.validate(auth, TRIGGER_AUTH_SCHEMA)
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] in by_kind("Deployment")
    assert target["name"] == "musicedit-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert set(trigger["metadata"]) <= REDIS_SCALER_KEYS
    assert trigger["metadata"]["listName"] == EDIT_QUEUE
    assert int(trigger["metadata"]["listLength"]) >= 1
    auth = auths[trigger["authenticationRef"]["name"]]
    secrets = by_kind("Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_worker_requests_a_gpu_and_outlives_its_shutdown_grace():
    worker = by_kind("Deployment")["musicedit-worker"]["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = by_kind("ConfigMap")["musicedit-config"]["data"]
    grace = float(config["MUSICEDIT_WORKER_SHUTDOWN_GRACE_SECONDS"])
    assert worker["terminationGracePeriodSeconds"] > grace
    port = int(config["MUSICEDIT_WORKER_METRICS_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert any(m["mountPath"] == "/models" for m in container["volumeMounts"])


def test_gateway_service_and_hpa_point_at_the_gateway():
    deployment = by_kind("Deployment")["musicedit-gateway"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")["musicedit-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    hpa = by_kind("HorizontalPodAutoscaler")["musicedit-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "musicedit-gateway"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request
    # readiness must not depend on workers (KEDA could not scale them up from zero otherwise)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_settings_in_configmap_secret_and_pods_are_settings_fields():
    config = by_kind("ConfigMap")["musicedit-config"]["data"]
    secret = by_kind("Secret")["musicedit-secrets"]["stringData"]
    check_settings_env({**config, **secret}, "ConfigMap + Secret")
    assert all(name.startswith("MUSICEDIT_") for name in {**config, **secret})
    for name, deployment in by_kind("Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {item["name"]: item["value"] for item in container.get("env", [])}
            check_settings_env({**config, **secret, **env}, f"Deployment {name}")
            refs = {ref.get("configMapRef", ref.get("secretRef"))["name"]
                    for ref in container["envFrom"]}
            assert refs == {"musicedit-config", "musicedit-secrets"}


def test_kustomization_lists_existing_files_and_no_secret():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_separation_pool_scales_on_its_own_queue_without_a_gpu():
    from musicedit.queue import SEPARATION_QUEUE, worker_queues

    jsonschema = pytest.importorskip("jsonschema", reason="pip install -r requirements/dev.txt")
    scaled = by_kind("ScaledObject")["musicedit-separation-worker"]
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["listName"] == SEPARATION_QUEUE
    assert set(trigger["metadata"]) <= REDIS_SCALER_KEYS
    deployments = by_kind("Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments

    def env(name: str) -> dict[str, str]:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        return {item["name"]: item["value"] for item in container.get("env", [])}

    separation = deployments["musicedit-separation-worker"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(separation["containers"][0]["resources"])
    assert env("musicedit-separation-worker")["MUSICEDIT_WORKER_ROLE"] == "separation"
    assert worker_queues("separation") == (SEPARATION_QUEUE,)
    # the GPU pool leaves separation-only jobs to it
    assert env("musicedit-worker")["MUSICEDIT_WORKER_ROLE"] == "edits"
    assert SEPARATION_QUEUE not in worker_queues("edits")
