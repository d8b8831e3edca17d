"""The Grafana dashboard asks only for metrics the gateway and workers really export."""

from __future__ import annotations

import json
import re

import yaml
from deploy_files import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "musicedit.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


def exported_names() -> set[str]:
    """Every family and sample name the gateway and worker registries expose."""
    from service.metrics import GatewayMetrics
    from worker.metrics import WorkerMetrics, _CudaMemoryCollector

    gateway = GatewayMetrics(queue_size=lambda: 0)
    gateway.requests.labels("/v1/edits", "POST", "202").inc()
    gateway.request_duration.labels("/v1/edits", "POST").observe(0.1)
    gateway.jobs.labels("queued").inc()
    worker = WorkerMetrics()
    worker.jobs.labels("succeeded").inc()
    names: set[str] = set()
    for registry in (gateway.registry, worker.registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    # registered only when CUDA is present; its family name is fixed in the collector
    names.update(family.name for family in _CudaMemoryCollector().collect())
    return names


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_metric_in_the_dashboard_is_exported():
    used = {name for expr in expressions() for name in re.findall(r"\bmusicedit_[a-z_]+", expr)}
    missing = used - exported_names()
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"


def test_dashboard_covers_what_operators_watch():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("queue depth", "end-to-end latency", "batch size", "real-time factor",
                  "gpu memory", "error rate"):
        assert topic in titles, topic
    joined = " ".join(expressions())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}" in joined


def test_provisioned_datasource_is_the_one_the_dashboard_uses():
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "musicedit.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
