"""Three fake clouds in one process, for a real worker to launch on: moto's EC2 server,
the GCP Compute fake and the Azure ARM fake, all handing out loopback addresses so one
sshd plays every node.

`CloudLab` starts them and says what a worker needs to use them (`env()` for its
environment, `config_yaml()` for `<home>/config.yaml`), switches capacity off and on
per place (`exhaust("gcp/us-central1/us-central1-a")`, as the plan names places), and
lists what each cloud still holds (`leftovers()`), so a test can show `down` left
nothing. Plain Python (no pytest): the integration tests and bench/cloud_launch.py
share it.

    with CloudLab(ssh_user="me", ssh_port=2222) as lab:
        lab.prepare_home(home)            # config.yaml + the worker's SSH key (authorize it)
        env = worker_env(os.environ, lab)  # start the worker with this
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.fakes import moto_ec2
from tests.fakes.azure_arm import FakeARM
from tests.fakes.gcp_compute import REGIONS as GCP_ZONES_OF
from tests.fakes.gcp_compute import FakeGCPCompute

# Regions the lab configures: each served by its fake and present in the shipped catalog.
AWS_REGION = moto_ec2.REGION
GCP_REGION = "us-central1"
AZURE_REGION = "eastus"
GCP_PROJECT = "skyloom-test"
AZURE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
AZURE_RESOURCE_GROUP = "skyloom"
AWS_IMAGE = moto_ec2.IMAGE
FAKE_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
OWNER_TAG = "skyloom-owner"  # cloud_api.OWNER_TAG, as the clouds show it
# EC2's filter for what skyloom made (every instance and security group carries the mark).
_TAGGED = [{"Name": "tag-key", "Values": [OWNER_TAG]}]
# Environment that would point a worker at real clouds: never inherited from the caller.
_CLOUD_ENV_PREFIXES = ("AWS_", "GOOGLE_", "CLOUDSDK_", "GCE_", "AZURE_", "MSI_", "IDENTITY_")
# Resources a worker keeps across clusters (its EC2 key pair, Azure's per-region network):
# listed by `holdings()`, not counted as left over by a cluster.
SHARED = frozenset({"aws key pairs", "azure vnets"})


class _FastARM(FakeARM):
    """The ARM fake answering a pending operation's poll with a short Retry-After, as
    ARM does: the SDK then polls again after 50 ms, not its default 2 s."""

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, payload = super().handle(method, raw_path, body)
        pending = isinstance(payload, dict) and payload.get("status") == "InProgress"
        if pending or status == 202 or "Azure-AsyncOperation" in headers:
            headers = {**headers, "retry-after-ms": "50"}
        return status, headers, payload


class _HoldableGCP(FakeGCPCompute):
    """The GCP fake whose zonal operations can be held RUNNING: a `wait` on one then
    long-polls (as GCP's does, for up to two minutes) and answers still RUNNING, so the
    call that made it stays in flight until `release()`."""

    def __init__(self, project: str) -> None:
        super().__init__(project)
        self._released = threading.Event()
        self._released.set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if "/zones/" in path and "/operations/" in path and not self._released.is_set():
            self._released.wait(0.5)  # outside the fake's lock: other calls go on
        return super().handle(method, path, query, body)

    def _get_op(self, zone: str, name: str, **kw: Any) -> Any:
        if not self._released.is_set():
            with self._lock:
                op = self._ops.get(name)
                if op is not None and op.scope == f"zones/{zone}":
                    return copy.deepcopy(op.body)
        return super()._get_op(zone, name, **kw)


class CloudLab:
    """moto (AWS), the GCP fake and the Azure fake, served on loopback in this process.

    `ssh_user`/`ssh_port`: the sshd that plays every node (it must accept the worker's
    key: `prepare_home` returns it)."""

    def __init__(self, *, ssh_user: str, ssh_port: int) -> None:
        self.ssh_user = ssh_user
        self.ssh_port = ssh_port
        self._stack = contextlib.ExitStack()
        self.moto_url = ""
        self.gcp: _HoldableGCP | None = None
        self.azure: _FastARM | None = None
        self._aws_exhausted: set[str] = set()

    # -- lifecycle

    def start(self) -> CloudLab:
        # moto's server logs every request it answers (werkzeug): hundreds of lines.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            self.moto_url = self._stack.enter_context(moto_ec2.serve())
            self._stack.enter_context(self._aws_capacity_hook())
            self._aws_account()
            self.gcp = _HoldableGCP(GCP_PROJECT)
            self._stack.callback(self.gcp.close)
            self.azure = _FastARM(AZURE_SUBSCRIPTION, (AZURE_RESOURCE_GROUP,))
            self.azure.start()
            self._stack.callback(self.azure.stop)
        except BaseException:
            self._stack.close()
            raise
        return self

    def close(self) -> None:
        if self.gcp is not None:
            self.gcp.release()
        self._stack.close()

    def __enter__(self) -> CloudLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a worker needs

    def env(self) -> dict[str, str]:
        """Environment of a worker using the lab (add it to a cleaned one: `worker_env`)."""
        assert self.gcp is not None and self.azure is not None, "start() first"
        return {
            **FAKE_AWS_CREDENTIALS,
            "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL_EC2": self.moto_url,
            # No ~/.aws files: only the lab's credentials and endpoint count.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "SKYLOOM_GCP_ENDPOINT": self.gcp.url,
            "SKYLOOM_AZURE_ENDPOINT": self.azure.url,
            "SKYLOOM_CLOUD_SSH_USER": self.ssh_user,
            "SKYLOOM_CLOUD_SSH_PORT": str(self.ssh_port),
        }

    def config_yaml(self) -> str:
        """`<home>/config.yaml`: one region per cloud, the fakes' project and group;
        internal IPs on AWS (moto gives loopback private addresses only)."""
        return yaml.safe_dump(
            {
                "aws": {
                    "vpc_name": moto_ec2.VPC_NAME,
                    "use_internal_ips": True,
                    "regions": [AWS_REGION],
                },
                "gcp": {"project_id": GCP_PROJECT, "regions": [GCP_REGION]},
                "azure": {
                    "subscription_id": AZURE_SUBSCRIPTION,
                    "resource_group": AZURE_RESOURCE_GROUP,
                    "regions": [AZURE_REGION],
                },
            },
            sort_keys=False,
        )

    def prepare_home(self, home: Path) -> str:
        """Write the worker's config.yaml into `home` and make its cloud SSH key (before
        the worker starts); returns the public key line for the sshd to authorize."""
        from skyloom.activities.providers.cloud import ensure_key

        home.mkdir(parents=True, exist_ok=True)
        (home / "config.yaml").write_text(self.config_yaml())
        return ensure_key(home / "ssh" / "skyloom-cloud-key")

    # -- capacity

    def exhaust(self, place: str) -> None:
        """No capacity at `place`, a plan's infra: `aws/<region>/<zone>`,
        `gcp/<region>/<zone>`, `azure/<region>[/<zone>]`; a region alone exhausts each
        of its zones."""
        assert self.gcp is not None and self.azure is not None, "start() first"
        cloud, region, zone = [*place.split("/"), None, None][:3]
        if cloud == "aws":
            self._aws_exhausted.update([zone] if zone else self._aws_zones(region or ""))
        elif cloud == "gcp":
            for z in [zone] if zone else GCP_ZONES_OF[region or ""]:
                self.gcp.exhaust(z or "")
        elif cloud == "azure":
            self.azure.exhaust(region or "", zone)
        else:
            raise ValueError(f"not a lab cloud: {place!r}")

    def exhaust_everything(self) -> None:
        """No capacity in any zone of any region the lab configures."""
        for place in (f"aws/{AWS_REGION}", f"gcp/{GCP_REGION}", f"azure/{AZURE_REGION}"):
            self.exhaust(place)

    def restore_capacity(self) -> None:
        """Capacity everywhere again. The GCP and Azure fakes have no knob to undo
        `exhaust`, so their sets are emptied here."""
        assert self.gcp is not None and self.azure is not None, "start() first"
        self._aws_exhausted.clear()
        with self.gcp._lock:
            self.gcp._exhausted.clear()
        with self.azure._lock:
            self.azure._exhausted.clear()

    @contextlib.contextmanager
    def held_gcp_operations(self) -> Iterator[None]:
        """GCP's zonal operations (instance inserts) stay RUNNING meanwhile: whoever
        waits on one is kept in flight. Instances inserted meanwhile exist in the fake."""
        assert self.gcp is not None, "start() first"
        self.gcp.hold()
        try:
            yield
        finally:
            self.gcp.release()

    # -- what the clouds hold

    def aws_instances(self) -> list[dict[str, Any]]:
        """skyloom's EC2 instances not terminated (moto lists terminated ones for a
        while, as EC2 does)."""
        pages = self._ec2().get_paginator("describe_instances").paginate(Filters=_TAGGED)
        return [
            inst
            for page in pages
            for res in page["Reservations"]
            for inst in res["Instances"]
            if inst["State"]["Name"] not in ("terminated", "shutting-down")
        ]

    def gcp_instances(self) -> dict[str, dict[str, Any]]:
        assert self.gcp is not None, "start() first"
        return self.gcp.instances

    def azure_vms(self) -> list[dict[str, Any]]:
        assert self.azure is not None, "start() first"
        return self.azure.vms()

    def instances_of(self, owner: str) -> list[str]:
        """Every instance of every cloud whose owner mark is `owner`, as `cloud:name`."""
        found = []
        for inst in self.aws_instances():
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            if tags.get(OWNER_TAG) == owner:
                found.append(f"aws:{inst['InstanceId']}")
        for name, inst in self.gcp_instances().items():
            marks = {i["key"]: i["value"] for i in inst.get("metadata", {}).get("items", [])}
            if marks.get(OWNER_TAG) == owner:
                found.append(f"gcp:{name}")
        for vm in self.azure_vms():
            if vm.get("tags", {}).get(OWNER_TAG) == owner:
                found.append(f"azure:{vm['name']}")
        return sorted(found)

    def holdings(self) -> dict[str, list[str]]:
        """What each cloud holds that skyloom made, by kind ("aws instances", ...),
        names sorted; kinds in SHARED are kept across clusters."""
        assert self.gcp is not None and self.azure is not None, "start() first"
        ec2 = self._ec2()
        groups = ec2.describe_security_groups(Filters=_TAGGED)["SecurityGroups"]
        keys = ec2.describe_key_pairs()["KeyPairs"]
        azure = self.azure
        return {
            "aws instances": sorted(
                f"{i['InstanceId']} ({i['State']['Name']})" for i in self.aws_instances()
            ),
            "aws security groups": sorted(g["GroupName"] for g in groups),
            "aws key pairs": sorted(
                k["KeyName"] for k in keys if k["KeyName"].startswith("skyloom-")
            ),
            "gcp instances": sorted(self.gcp.instances),
            "gcp firewalls": sorted(self.gcp.firewalls),
            "azure vms": sorted(r["name"] for r in azure.vms()),
            "azure nics": sorted(r["name"] for r in azure.nics()),
            "azure public ips": sorted(r["name"] for r in azure.public_ips()),
            "azure disks": sorted(r["name"] for r in azure.disks()),
            "azure nsgs": sorted(r["name"] for r in azure.nsgs()),
            "azure vnets": sorted(r["name"] for r in azure.vnets()),
        }

    def leftovers(self) -> dict[str, list[str]]:
        """What clusters left behind: holdings that are not SHARED, non-empty only."""
        return {k: v for k, v in self.holdings().items() if v and k not in SHARED}

    def wait_clean(self, timeout: float = 60) -> dict[str, list[str]]:
        """leftovers() once empty, or what is still left after timeout (deletes that a
        worker started may still be finishing)."""
        deadline = time.monotonic() + timeout
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = self.leftovers()
        return left

    # -- AWS plumbing

    def _ec2(self) -> Any:
        import boto3

        return boto3.client(
            "ec2",
            region_name=AWS_REGION,
            endpoint_url=self.moto_url,
            aws_access_key_id=FAKE_AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def _aws_zones(self, region: str) -> list[str]:
        zones = self._ec2().describe_availability_zones()["AvailabilityZones"]
        return [z["ZoneName"] for z in zones if z["RegionName"] == region]

    def _aws_account(self) -> None:
        """moto_ec2.fresh_account (the VPC in 127.0.0.0/16, subnets in -1a and -1b), then
        a subnet in every other zone of the region too: each zone the catalog offers
        is a place a launch can land."""
        with _environ({**FAKE_AWS_CREDENTIALS, "AWS_ENDPOINT_URL_EC2": self.moto_url}):
            moto_ec2.fresh_account(self.moto_url)
        ec2 = self._ec2()
        vpc = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [moto_ec2.VPC_NAME]}])
        vpc_id = vpc["Vpcs"][0]["VpcId"]
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
        have = {s["AvailabilityZone"] for s in subnets["Subnets"]}
        for n, zone in enumerate(self._aws_zones(AWS_REGION)):
            if zone not in have:
                block = f"127.0.{n + 11}.0/24"
                ec2.create_subnet(VpcId=vpc_id, CidrBlock=block, AvailabilityZone=zone)

    @contextlib.contextmanager
    def _aws_capacity_hook(self) -> Iterator[None]:
        """EC2 answers InsufficientInstanceCapacity in exhausted zones, as AWS does: moto
        has no such knob, so its backend's run_instances is wrapped while the lab runs
        (moto serves from this process)."""
        from moto.ec2 import models
        from moto.ec2.exceptions import EC2ClientError

        real = models.EC2Backend.run_instances
        lab = self

        def run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
            zone = _requested_zone(backend, kwargs)
            if zone in lab._aws_exhausted:
                itype = kwargs.get("instance_type", "")
                raise EC2ClientError(
                    "InsufficientInstanceCapacity",
                    f"We currently do not have sufficient {itype} capacity in the "
                    f"Availability Zone you requested ({zone}).",
                )
            return real(backend, *args, **kwargs)

        setattr(models.EC2Backend, "run_instances", run_instances)  # noqa: B010
        try:
            yield
        finally:
            setattr(models.EC2Backend, "run_instances", real)  # noqa: B010


def _requested_zone(backend: Any, kwargs: dict[str, Any]) -> str | None:
    """The zone a RunInstances call asks for: its placement, else its subnet's zone."""
    if kwargs.get("placement"):
        return str(kwargs["placement"])
    subnet = kwargs.get("subnet_id") or next(
        (n.get("SubnetId") for n in kwargs.get("nics") or [] if n.get("SubnetId")), None
    )
    return str(backend.get_subnet(subnet).availability_zone) if subnet else None


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored after (fresh_account uses boto3's chain)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def worker_env(base: Mapping[str, str], lab: CloudLab) -> dict[str, str]:
    """`base` without any real cloud's credentials or endpoints, plus the lab's."""
    clean = {k: v for k, v in base.items() if not k.startswith(_CLOUD_ENV_PREFIXES)}
    return {**clean, **lab.env()}
