"""The seam between skyloom and one cloud's SDK: the few calls a cloud provider makes.

`CloudProvider` (cloud.py) does everything the three clouds share (offers from the
catalog, SSH to the nodes, the watcher's sweep, failover data); a `CloudAPI` does only
what differs: creating, listing, stopping and deleting instances with boto3,
google-cloud-compute or azure-mgmt-compute. Tests drive the real SDKs against moto or a
fake of the cloud's REST API, so this seam is where the cloud ends.

Every instance skyloom creates carries four marks (AWS tags, GCP labels/metadata, Azure
tags) and is only ever found through them, never remembered elsewhere:
`skyloom-owner` (the cluster's uid: a new cluster of the same name has another),
`skyloom-cluster`, `skyloom-rank`, and `skyloom-workflow` (whom the watcher tells when
the instance is preempted).

Contract of every call (the provider contract, see base.py):
- idempotent: `create_instances` is told which ranks are missing (the caller listed the
  owner's instances first), and it may be cut off half-way by a crash: the next call
  finds what the first made by the marks;
- fast: no waiting for an instance to boot; `list_instances` is how callers wait;
- `delete_instances` succeeds when nothing is left, and also removes what skyloom made
  for the owner around the instances (security groups, firewall rules, NICs, public
  IPs, disks);
- failures are `provider_error`s: NO_CAPACITY / QUOTA (the next zone or region is tried)
  with `Where(infra=<cloud>, region, zone, instance_type)`; CREDENTIALS; INVALID_SPEC
  naming the field (`resources.image_id`, ...); anything transient is raised as is (the
  activity retries it).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from skyloom.activities.models import CheckResult, NodeState

OWNER_TAG = "skyloom-owner"
CLUSTER_TAG = "skyloom-cluster"
RANK_TAG = "skyloom-rank"
WORKFLOW_TAG = "skyloom-workflow"


def digest(text: str, n: int = 12) -> str:
    """A short stable name part for what cannot go into a cloud's names as it is (an
    owner with dots and capitals, a public key)."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Instance:
    """One VM as its cloud reports it."""

    id: str  # the cloud's own id or name (what delete/stop/start take)
    region: str
    zone: str | None
    state: NodeState  # PENDING while booting; PREEMPTED when a spot VM was reclaimed
    cluster: str
    owner: str
    rank: int
    workflow_id: str | None = None
    instance_type: str | None = None
    spot: bool = False
    public_ip: str | None = None
    private_ip: str | None = None


@dataclass(frozen=True)
class InstanceRequest:
    """The ranks of one cluster to create at one place (region, zone, instance type)."""

    cluster: str
    owner: str
    region: str
    zone: str | None
    instance_type: str
    ranks: list[int]
    ssh_user: str
    ssh_public_key: str  # "ssh-ed25519 AAAA... skyloom"
    workflow_id: str | None = None
    spot: bool = False
    # Accelerators to attach (GCP's N1 + attachable GPUs); empty when the instance type
    # carries them (every AWS and Azure GPU type, GCP's a2/a3/g2).
    accelerators: dict[str, int] = field(default_factory=dict)
    disk_size_gb: int = 256
    disk_tier: str | None = None  # low | medium | high | ultra | best (SkyPilot's)
    image_id: str | None = None  # None: the cloud's default Ubuntu image
    ports: list[str] = field(default_factory=list)  # "8080", "10000-10010"
    labels: dict[str, str] = field(default_factory=dict)  # the user's resources.labels


class CloudAPI(ABC):
    """One cloud's instance calls; see the module docstring for the contract."""

    cloud: str  # "aws" | "gcp" | "azure"

    @abstractmethod
    def check(self) -> CheckResult:
        """Whether credentials are found and work (one cheap authenticated call), and
        why not in one line (`infra` = the cloud)."""

    @abstractmethod
    def regions(self) -> list[str]:
        """The regions skyloom may use and watch (all the catalog knows, narrowed by the
        user's config where the cloud has such a key)."""

    @abstractmethod
    def list_instances(self, region: str, owner: str | None = None) -> list[Instance]:
        """Every skyloom instance in the region (or only the owner's), in one call or
        one paginated listing, including stopped and preempted ones; never deleted
        ones."""

    @abstractmethod
    def create_instances(self, req: InstanceRequest) -> list[Instance]:
        """Create req.ranks (nothing else) and return them as created (PENDING is fine)."""

    @abstractmethod
    def delete_instances(self, region: str, owner: str) -> None:
        """Delete every instance of the owner in the region and what was made for them."""

    def stop_instances(self, region: str, owner: str) -> None:
        raise NotImplementedError(f"{self.cloud}: stop")

    def start_instances(self, region: str, owner: str) -> None:
        raise NotImplementedError(f"{self.cloud}: start")

    def catalog_source(self) -> Any:
        """The cloud's own price and machine-type APIs, with this API's credentials and
        regions (a `skyloom.activities.catalog.refresh` source)."""
        raise NotImplementedError(f"{self.cloud}: catalog refresh")
