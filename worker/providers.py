"""Builds the real providers the worker injects into its activities.

Clouds are configured as in SkyPilot's `~/.sky/config.yaml`, from the worker's
`<home>/config.yaml`:

    aws:   {vpc_name, use_internal_ips, regions}
    gcp:   {project_id, use_internal_ips, regions}
    azure: {subscription_id, resource_group, use_internal_ips, regions}

Credentials come from each SDK's own chain, looked for without a network call. A cloud
whose SDK, credentials or required setting is missing is not enabled on the worker;
`skyloom check` says why, one line each.

Test seams (environment): SKYLOOM_GCP_ENDPOINT / SKYLOOM_AZURE_ENDPOINT point the real
SDKs at a loopback fake (anonymous credentials); boto3 has its own
(`AWS_ENDPOINT_URL_EC2`). SKYLOOM_CLOUD_SSH_USER / _PORT: one sshd plays every node.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from skyloom.activities import catalog
from skyloom.activities.cluster import Providers
from skyloom.activities.providers.base import Provider
from skyloom.activities.providers.cloud import CloudProvider
from skyloom.activities.providers.cloud_api import CloudAPI
from skyloom.activities.providers.local import LocalProvider
from skyloom.activities.providers.ssh import SSHProvider

CONFIG_FILE = "config.yaml"
# Who cloud nodes are logged into as (the images' default users), and on which port.
SSH_USERS = {"aws": "ubuntu", "gcp": "gcpuser", "azure": "azureuser"}
# One resource group holds every skyloom VM of a subscription unless the config names one.
DEFAULT_RESOURCE_GROUP = "skyloom"
_KEYS = {
    "aws": {"vpc_name", "use_internal_ips", "regions"},
    "gcp": {"project_id", "use_internal_ips", "regions"},
    "azure": {"subscription_id", "resource_group", "use_internal_ips", "regions"},
}


class ConfigError(ValueError):
    """A config file that cannot be used; names the file, the key and what was expected."""


@dataclass
class Enabled:
    api: CloudAPI


@dataclass
class Disabled:
    reason: str


def load_config(home: Path) -> dict[str, Any]:
    """`<home>/config.yaml`, checked: known sections, known keys, the right types."""
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (aws:, gcp:, azure:)")
    for cloud, section in data.items():
        if cloud not in _KEYS:
            continue  # other tools' sections (SkyPilot's config has many) are left alone
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: {cloud}: expected a mapping of settings")
        for key, value in section.items():
            where = f"{path}: {cloud}.{key}"
            if key not in _KEYS[cloud]:
                continue  # SkyPilot keys skyloom does not use yet
            if key == "use_internal_ips" and not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            if key == "regions" and not (
                isinstance(value, list) and all(isinstance(r, str) for r in value)
            ):
                raise ConfigError(f"{where}: expected a list of region names, got {value!r}")
            if key not in ("use_internal_ips", "regions") and not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string, got {value!r}")
    return data


def build_providers(home: Path) -> Providers:
    # A node unreachable for this long fails its job (tests shorten it).
    grace = float(os.environ.get("SKYLOOM_UNREACHABLE_GRACE_SECONDS", "60"))
    config = load_config(home)
    providers: dict[str, Provider] = {
        "local": LocalProvider(home / "local"),
        "ssh": SSHProvider(home, unreachable_grace=grace),
    }
    disabled: dict[str, str] = {}
    store = catalog.CatalogStore(home / "catalog")
    for cloud, found in cloud_apis(config, store.get(), home).items():
        if isinstance(found, Disabled):
            disabled[cloud] = found.reason
            continue
        section = config.get(cloud) or {}
        providers[cloud] = CloudProvider(
            found.api,
            home,
            ssh_user=os.environ.get("SKYLOOM_CLOUD_SSH_USER") or SSH_USERS[cloud],
            ssh_port=int(os.environ.get("SKYLOOM_CLOUD_SSH_PORT") or 22),
            use_internal_ips=bool(section.get("use_internal_ips", False)),
            catalog=store,
            unreachable_grace=grace,
        )
    return Providers(providers, disabled, store)


def cloud_apis(
    config: dict[str, Any], shipped: catalog.Catalog, home: Path
) -> dict[str, Enabled | Disabled]:
    """Each cloud's API when the worker can use it, or why not."""
    where = home / CONFIG_FILE
    out: dict[str, Enabled | Disabled] = {}
    for cloud, build in (("aws", _aws), ("gcp", _gcp), ("azure", _azure)):
        section = config.get(cloud) or {}
        regions = _regions(section, shipped.regions(cloud))
        if not regions:
            out[cloud] = Disabled(f"none of {where}: {cloud}.regions is in the catalog")
            continue
        out[cloud] = build(section, regions, where)
    return out


def _aws(section: dict[str, Any], regions: list[str], where: Path) -> Enabled | Disabled:
    try:
        import boto3
    except ImportError:
        return Disabled("boto3 is not installed: pip install 'skyloom[aws]'")
    if boto3.session.Session().get_credentials() is None:
        return Disabled(
            "no AWS credentials found (boto3's chain: AWS_ACCESS_KEY_ID/AWS_PROFILE, "
            "~/.aws/credentials, SSO, an instance role); run `aws configure`"
        )
    from skyloom.activities.providers.aws import AWSAPI

    return Enabled(
        AWSAPI(
            regions,
            vpc_name=section.get("vpc_name"),
            use_internal_ips=bool(section.get("use_internal_ips", False)),
        )
    )


def _gcp(section: dict[str, Any], regions: list[str], where: Path) -> Enabled | Disabled:
    if not _installed("google.auth", "google.cloud.compute_v1"):
        return Disabled("google-cloud-compute is not installed: pip install 'skyloom[gcp]'")
    from skyloom.activities.providers.gcp import GCPAPI

    endpoint = os.environ.get("SKYLOOM_GCP_ENDPOINT")
    project = (
        section.get("project_id")
        or os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("CLOUDSDK_CORE_PROJECT")
    )
    if endpoint:
        if not project:
            return Disabled(f"gcp.project_id is not set in {where}")
        return Enabled(GCPAPI(project, regions, endpoint=endpoint))
    if not _gcp_credentials_present():
        return Disabled(
            "no GCP credentials found (GOOGLE_APPLICATION_CREDENTIALS or "
            "~/.config/gcloud/application_default_credentials.json); run "
            "`gcloud auth application-default login`"
        )
    import google.auth

    try:
        credentials, found_project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except Exception as e:  # the SDK's chain says why (a malformed key file, ...)
        return Disabled(f"GCP credentials unusable: {str(e).splitlines()[0][:200]}")
    project = project or found_project
    if not project:
        return Disabled(f"no GCP project: set gcp.project_id in {where}")
    return Enabled(GCPAPI(project, regions, credentials=credentials))


def _installed(*modules: str) -> bool:
    """Whether the SDK modules can be imported, without importing them (seconds of
    start-up for a worker that never uses that cloud)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in modules)
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _gcp_credentials_present() -> bool:
    """Whether google-auth's chain has a credentials file to read (looked for without
    asking the GCE metadata server, which only answers on GCP's own VMs)."""
    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if explicit:
        return Path(explicit).expanduser().exists()
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    return (Path(config_dir) / "application_default_credentials.json").exists() or bool(
        os.environ.get("GCE_METADATA_HOST")
    )


def _azure(section: dict[str, Any], regions: list[str], where: Path) -> Enabled | Disabled:
    if not _installed("azure.identity", "azure.mgmt.compute", "azure.mgmt.network"):
        return Disabled("the Azure SDK is not installed: pip install 'skyloom[azure]'")
    from skyloom.activities.providers.azure import AzureAPI

    group = section.get("resource_group") or DEFAULT_RESOURCE_GROUP
    subscription = (
        section.get("subscription_id")
        or os.environ.get("AZURE_SUBSCRIPTION_ID")
        or _azure_cli_subscription()
    )
    endpoint = os.environ.get("SKYLOOM_AZURE_ENDPOINT")
    if endpoint:
        if not subscription:
            return Disabled(f"azure.subscription_id is not set in {where}")
        return Enabled(AzureAPI(subscription, group, regions, endpoint=endpoint))
    if not _azure_credentials_present():
        return Disabled(
            "no Azure credentials found (AZURE_CLIENT_ID with a secret or certificate, a "
            "workload identity, or `az login`)"
        )
    if not subscription:
        return Disabled(
            f"no Azure subscription: set azure.subscription_id in {where} or "
            "AZURE_SUBSCRIPTION_ID, or `az account set`"
        )
    return Enabled(AzureAPI(subscription, group, regions))


def _azure_dir() -> Path:
    return Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")


def _azure_credentials_present() -> bool:
    """Whether DefaultAzureCredential has something local to use (environment, workload
    identity, the Azure CLI's login); a managed identity is asked for only on Azure."""
    if os.environ.get("AZURE_CLIENT_ID") and (
        os.environ.get("AZURE_CLIENT_SECRET")
        or os.environ.get("AZURE_CLIENT_CERTIFICATE_PATH")
        or os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
    ):
        return True
    return (_azure_dir() / "azureProfile.json").exists() or bool(
        os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT")
    )


def _azure_cli_subscription() -> str | None:
    """The Azure CLI's default subscription (`az account set`), if it has one."""
    path = _azure_dir() / "azureProfile.json"
    try:
        # The CLI writes this file with a UTF-8 byte-order mark.
        profile = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    for sub in profile.get("subscriptions") or []:
        if isinstance(sub, dict) and sub.get("isDefault") and sub.get("id"):
            return str(sub["id"])
    return None


def _regions(section: dict[str, Any], known: list[str]) -> list[str]:
    """The catalog's regions, narrowed by the section's `regions:` list when given."""
    wanted = section.get("regions")
    return [r for r in known if r in wanted] if wanted else known
