"""Which clouds a worker enables, from its config and each SDK's credential chain (looked
for without a network call), and why the others are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from skyloom.activities import catalog
from skyloom.activities.providers.azure import AzureAPI
from skyloom.activities.providers.gcp import GCPAPI
from skyloom.worker import providers as wp

CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_CONFIG", "GCE_METADATA_HOST",
    "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID", "AZURE_CONFIG_DIR",
    "IDENTITY_ENDPOINT", "MSI_ENDPOINT", "SKYLOOM_GCP_ENDPOINT", "SKYLOOM_AZURE_ENDPOINT",
)  # fmt: skip
SHIPPED = catalog.load()


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with no cloud credentials anywhere (and no instance metadata to ask)."""
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "user" / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "user" / "no-aws-creds"))
    home = tmp_path / "skyloom"
    home.mkdir()
    return home


def apis(home: Path) -> dict[str, wp.Enabled | wp.Disabled]:
    return wp.cloud_apis(wp.load_config(home), SHIPPED, home)


def test_without_credentials_every_cloud_says_why(bare: Path):
    found = apis(bare)
    assert all(isinstance(f, wp.Disabled) for f in found.values())
    why = {c: f.reason for c, f in found.items() if isinstance(f, wp.Disabled)}
    assert "no AWS credentials" in why["aws"] and "aws configure" in why["aws"]
    assert "no GCP credentials" in why["gcp"] and "gcloud auth" in why["gcp"]
    assert "no Azure credentials" in why["azure"] and "az login" in why["azure"]
    providers = wp.build_providers(bare)
    assert providers.names() == ["local", "ssh"]
    assert set(providers.disabled) == {"aws", "gcp", "azure"}


def test_credentials_and_settings_from_each_sdks_usual_places(
    bare: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    # GCP: application default credentials (a service account key) name the project.
    key = tmp_path / "sa.json"
    key.write_text(json.dumps(_service_account("proj-from-key")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    # Azure: the CLI's login and its default subscription (written with a BOM, as az does).
    azure_dir = tmp_path / "user" / ".azure"
    azure_dir.mkdir(parents=True)
    subs = [{"id": "sub-a", "isDefault": False}, {"id": "sub-b", "isDefault": True}]
    profile = {"subscriptions": subs}
    (azure_dir / "azureProfile.json").write_text(json.dumps(profile), encoding="utf-8-sig")
    (bare / "config.yaml").write_text(
        "aws: {regions: [us-east-1, us-west-2]}\nazure: {resource_group: ml}\n"
    )
    found = apis(bare)
    aws, gcp, azure = (found[c] for c in ("aws", "gcp", "azure"))
    assert isinstance(aws, wp.Enabled) and aws.api.regions() == ["us-east-1", "us-west-2"]
    assert isinstance(gcp, wp.Enabled) and isinstance(gcp.api, GCPAPI)
    assert gcp.api.project == "proj-from-key"
    assert gcp.api.regions() == SHIPPED.regions("gcp")
    assert isinstance(azure, wp.Enabled) and isinstance(azure.api, AzureAPI)
    assert (azure.api.subscription_id, azure.api.resource_group) == ("sub-b", "ml")
    # The config's project wins over the key's; a region list no catalog has disables.
    (bare / "config.yaml").write_text("gcp: {project_id: mine}\nazure: {regions: [mars]}\n")
    found = apis(bare)
    assert isinstance(found["gcp"], wp.Enabled) and found["gcp"].api.project == "mine"
    assert isinstance(found["azure"], wp.Disabled) and "azure.regions" in found["azure"].reason


def test_test_endpoints_need_only_the_ids(bare: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SKYLOOM_GCP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("SKYLOOM_AZURE_ENDPOINT", "http://127.0.0.1:9")
    found = apis(bare)
    assert isinstance(found["gcp"], wp.Disabled) and "gcp.project_id" in found["gcp"].reason
    assert isinstance(found["azure"], wp.Disabled)
    assert "azure.subscription_id" in found["azure"].reason
    (bare / "config.yaml").write_text(
        "gcp: {project_id: p, regions: [us-central1]}\nazure: {subscription_id: s}\n"
    )
    found = apis(bare)
    assert isinstance(found["gcp"], wp.Enabled) and found["gcp"].api.regions() == ["us-central1"]
    assert isinstance(found["azure"], wp.Enabled)
    assert found["azure"].api.resource_group == wp.DEFAULT_RESOURCE_GROUP


@pytest.mark.parametrize(
    "text,named",
    [
        ("aws: [1, 2]\n", "aws: expected a mapping"),
        ("aws: {use_internal_ips: 'yes'}\n", "aws.use_internal_ips: expected true or false"),
        ("gcp: {regions: us-central1}\n", "gcp.regions: expected a list"),
        ("azure: {resource_group: 3}\n", "azure.resource_group: expected a string"),
        ("- a\n", "expected a mapping of sections"),
        ("aws: {vpc_name: [\n", "not valid YAML"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(bare: Path, text: str, named: str):
    (bare / "config.yaml").write_text(text)
    with pytest.raises(wp.ConfigError) as info:
        wp.load_config(bare)
    assert str(info.value).startswith(str(bare / "config.yaml")) and named in str(info.value)


def test_other_tools_sections_and_keys_are_left_alone(bare: Path):
    # A copy of SkyPilot's config works: keys skyloom does not use are not errors.
    (bare / "config.yaml").write_text(
        "jobs: {controller: {resources: {cpus: 4+}}}\naws: {labels: {team: ml}}\n"
    )
    assert wp.load_config(bare)["aws"] == {"labels": {"team": "ml"}}


def _service_account(project: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": f"skyloom@{project}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
