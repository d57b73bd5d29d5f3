"""Builds the real providers the worker injects into its activities.

Clouds are configured as in SkyPilot's `~/.sky/config.yaml`, from the worker's
`<home>/config.yaml` (`aws.vpc_name`, `aws.use_internal_ips`, `gcp.project_id`,
`azure.resource_group`, `azure.subscription_id`, ...); credentials come from each SDK's own
chain. A cloud whose SDK or credentials are missing is not enabled on the worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from skyloom.activities import catalog
from skyloom.activities.cluster import Providers
from skyloom.activities.providers.aws import AWSAPI
from skyloom.activities.providers.base import Provider
from skyloom.activities.providers.cloud import CloudProvider
from skyloom.activities.providers.local import LocalProvider
from skyloom.activities.providers.ssh import SSHProvider

CONFIG_FILE = "config.yaml"
# Who cloud nodes are logged into as (the images' default users), and on which port.
# SKYLOOM_CLOUD_SSH_USER / _PORT override them: tests play every instance with one sshd.
SSH_USERS = {"aws": "ubuntu", "gcp": "gcpuser", "azure": "azureuser"}


def load_config(home: Path) -> dict[str, Any]:
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections (aws:, gcp:, azure:)")
    return data


def build_providers(home: Path) -> Providers:
    # A node unreachable for this long fails its job (tests shorten it).
    grace = float(os.environ.get("SKYLOOM_UNREACHABLE_GRACE_SECONDS", "60"))
    config = load_config(home)
    providers: dict[str, Provider] = {
        "local": LocalProvider(home / "local"),
        "ssh": SSHProvider(home, unreachable_grace=grace),
    }
    shipped = catalog.load(home / "catalog")
    for cloud, api in _cloud_apis(config, shipped).items():
        section = config.get(cloud) or {}
        providers[cloud] = CloudProvider(
            api,
            home,
            ssh_user=os.environ.get("SKYLOOM_CLOUD_SSH_USER") or SSH_USERS[cloud],
            ssh_port=int(os.environ.get("SKYLOOM_CLOUD_SSH_PORT") or 22),
            use_internal_ips=bool(section.get("use_internal_ips", False)),
            catalog=shipped,
            unreachable_grace=grace,
        )
    return Providers(providers)


def _aws_credentials() -> bool:
    """Whether boto3 is installed and finds credentials (locally: no call is made)."""
    try:
        import boto3
    except ImportError:
        return False
    return boto3.session.Session().get_credentials() is not None


def _cloud_apis(config: dict[str, Any], shipped: catalog.Catalog) -> dict[str, Any]:
    """The clouds this worker can use: SDK installed and credentials found."""
    apis: dict[str, Any] = {}
    aws = config.get("aws") or {}
    if not _aws_credentials():
        return apis
    apis["aws"] = AWSAPI(
        _regions(aws, shipped.regions("aws")),
        vpc_name=aws.get("vpc_name"),
        use_internal_ips=bool(aws.get("use_internal_ips", False)),
    )
    return apis


def _regions(section: dict[str, Any], known: list[str]) -> list[str]:
    """The catalog's regions, narrowed by the section's `regions:` list when given."""
    wanted = section.get("regions")
    return [r for r in known if r in wanted] if wanted else known
