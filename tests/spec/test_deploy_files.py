"""docker-compose.yml and deploy/ stay consistent with the code (they cannot run here)."""

from __future__ import annotations

from pathlib import Path

import yaml
from skyloom.workflows import search

ROOT = Path(__file__).resolve().parents[2]


def test_compose_registers_every_search_attribute_and_builds_the_worker():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgresql", "temporal", "temporal-ui", "worker"} <= set(services)
    setup = " ".join(services["temporal-setup"]["command"])
    for key in search.ALL:
        assert key.name in setup
    assert (ROOT / services["worker"]["build"]["dockerfile"]).exists()
    assert services["worker"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_dockerfile_copies_every_package_folder():
    import tomllib

    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].values()
    for d in dirs:
        if "/" not in d:
            assert f"COPY {d} {d}" in dockerfile


def test_kubernetes_worker_manifest_parses():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "worker.yaml").read_text()))
    deployment = docs[0]
    assert deployment["kind"] == "Deployment"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in container["env"]} >= {"TEMPORAL_ADDRESS", "SKYLOOM_SECRETS_KEY"}


def test_compose_runs_the_load_balancer_the_workers_configure():
    import json

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    lb, worker = compose["services"]["lb"], compose["services"]["worker"]
    config_file = lb["volumes"][0].split(":")[0]
    config = json.loads((ROOT / config_file).read_text())
    # The workers reach the admin API inside the network; it is never published.
    admin_port = config["admin"]["listen"].rsplit(":", 1)[1]
    assert worker["environment"]["SKYLOOM_LB_ADMIN"] == f"http://lb:{admin_port}"
    assert f"lb:{admin_port}" in config["admin"]["origins"]
    assert not any(str(p).startswith(admin_port) for p in lb["ports"])
    # The endpoints' ports are published, and are the ones the workers hand out.
    assert lb["ports"] == [f"{worker['environment']['SKYLOOM_LB_PORTS']}:"
                           f"{worker['environment']['SKYLOOM_LB_PORTS']}"]  # fmt: skip
    assert lb["restart"] == "unless-stopped"  # a dead load balancer comes back
