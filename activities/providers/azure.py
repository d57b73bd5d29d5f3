"""Azure's side of the CloudAPI seam: VMs, NICs, public IPs and NSGs through
azure-mgmt-compute and azure-mgmt-network, found again only by their skyloom tags.

Everything lives in one resource group that must already exist (`check()` says so when
it does not): skyloom never creates or deletes resource groups, so it needs no rights
on the subscription beyond that group, and cleaning up is never "delete the group".
The per-region network (`skyloom-<region>`) is shared by every cluster and kept.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from skyloom.activities.errors import ErrorKind, Where, kind_of, provider_error
from skyloom.activities.models import CheckResult, NodeState
from skyloom.activities.providers.cloud_api import (
    CLUSTER_TAG,
    OWNER_TAG,
    RANK_TAG,
    WORKFLOW_TAG,
    CloudAPI,
    Instance,
    InstanceRequest,
    digest,
)
from temporalio.exceptions import ApplicationError

# Set by stop_instances, cleared by start_instances: a deallocated Spot VM without it was
# evicted by Azure, which is how PREEMPTED is told apart from STOPPED.
STOPPED_TAG = "skyloom-stopped"
INSTALL_HINT = "pip install 'skyloom[azure]'"

UBUNTU = {
    "publisher": "Canonical",
    "offer": "0001-com-ubuntu-server-jammy",
    "sku": "22_04-lts-gen2",
    "version": "latest",
}
DISK_SKUS = {
    "low": "Standard_LRS",
    "medium": "StandardSSD_LRS",
    "high": "Premium_LRS",
    "ultra": "Premium_LRS",
    "best": "Premium_LRS",
}
# The address space of the per-region network skyloom makes; VMs only talk inside it
# and out through their public IPs.
VNET_PREFIX = "10.200.0.0/16"
SUBNET_PREFIX = "10.200.0.0/18"

NO_CAPACITY_CODES = {
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
    "SkuNotAvailable",
}
CREDENTIAL_CODES = {
    "AuthenticationFailed",
    "AuthorizationFailed",
    "InvalidAuthenticationToken",
    "ExpiredAuthenticationToken",
    "LinkedAuthorizationFailed",
    "SubscriptionNotFound",
    "ResourceGroupNotFound",
}
IMAGE_CODES = {"PlatformImageNotFound", "ImageNotFound", "InvalidImageReference"}


@dataclass(frozen=True)
class _Clients:
    compute: Any
    network: Any


class AzureAPI(CloudAPI):
    """Azure VMs in one resource group; see cloud_api.py for the contract.

    `poll_seconds` is how often an operation is polled when ARM gives no Retry-After;
    `wait_seconds` bounds every wait for operations (creating the VMs included, since
    Azure reports a lack of capacity only when the VM's operation fails)."""

    cloud = "azure"

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        regions: list[str],
        *,
        credential: Any = None,
        endpoint: str | None = None,
        poll_seconds: float = 2.0,
        wait_seconds: float = 900.0,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self._regions = list(regions)
        self._credential = credential
        self._endpoint = endpoint
        self._poll_seconds = poll_seconds
        self._wait_seconds = wait_seconds
        self._built: _Clients | None = None

    def catalog_source(self) -> Any:
        from skyloom.activities.catalog import refresh

        return refresh.azure_source(
            self.subscription_id, self.regions(), credential=self._credential
        )

    # -- clients -----------------------------------------------------------------------

    def _clients(self) -> _Clients:
        if self._built is None:
            try:
                from azure.identity import DefaultAzureCredential
                from azure.mgmt.compute import ComputeManagementClient
                from azure.mgmt.network import NetworkManagementClient
            except ImportError as err:
                raise provider_error(
                    ErrorKind.CREDENTIALS,
                    f"Azure SDK missing: {INSTALL_HINT}",
                    where=Where(infra=self.cloud),
                ) from err
            options: dict[str, Any] = {"polling_interval": self._poll_seconds}
            credential = self._credential
            if self._endpoint is not None:
                options["base_url"] = self._endpoint
                if credential is None:
                    credential = _FixedToken()
                if urlsplit(self._endpoint).scheme == "http":
                    options["per_call_policies"] = [_plain_http_policy(self._endpoint)]
            elif credential is None:
                credential = DefaultAzureCredential()
            self._built = _Clients(
                compute=ComputeManagementClient(credential, self.subscription_id, **options),
                network=NetworkManagementClient(credential, self.subscription_id, **options),
            )
        return self._built

    # -- CloudAPI ----------------------------------------------------------------------

    def regions(self) -> list[str]:
        return list(self._regions)

    def check(self) -> CheckResult:
        try:
            # One page of the group's VMs: authenticated, scoped to the group, and cheap.
            pages = self._clients().compute.virtual_machines.list(self.resource_group).by_page()
            next(iter(pages), None)
        except Exception as err:
            return CheckResult(infra=self.cloud, enabled=False, reason=self._check_reason(err))
        return CheckResult(
            infra=self.cloud,
            enabled=True,
            reason=f"subscription {self.subscription_id}, resource group {self.resource_group}",
        )

    def _check_reason(self, err: Exception) -> str:
        if isinstance(err, ApplicationError):
            return err.message
        codes, _ = _error_codes(err)
        if "ResourceGroupNotFound" in codes:
            return (
                f"resource group {self.resource_group} does not exist in subscription "
                f"{self.subscription_id}; create it: az group create -n {self.resource_group} "
                f"-l {self._regions[0] if self._regions else 'eastus'}"
            )
        return f"{type(err).__name__}: {_first_line(err)}"

    def list_instances(self, region: str, owner: str | None = None) -> list[Instance]:
        try:
            return self._list(region, owner)
        except Exception as err:
            raise _mapped(err, Where(infra=self.cloud, region=region)) from err

    def _list(self, region: str, owner: str | None) -> list[Instance]:
        c = self._clients()
        vms = [
            vm
            for vm in _dicts(c.compute.virtual_machines.list(self.resource_group))
            if _ours(vm, owner) and vm.get("location", "").lower() == region.lower()
        ]
        if not vms:
            return []
        # Azure has no single listing with both tags and power state: the group's VMs
        # carry tags and profiles, `statusOnly` carries only run-time status. Two listings
        # (and one each for NICs and public IPs) per sweep, however many VMs there are.
        statuses = {
            vm["id"].lower(): vm.get("properties", {}).get("instanceView", {}).get("statuses", [])
            for vm in _dicts(c.compute.virtual_machines.list_all(status_only="true"))
        }
        nics = {
            n["id"].lower(): n
            for n in _dicts(c.network.network_interfaces.list(self.resource_group))
        }
        pips = {
            p["id"].lower(): p.get("properties", {}).get("ipAddress")
            for p in _dicts(c.network.public_ip_addresses.list(self.resource_group))
        }
        return [self._instance(vm, statuses.get(vm["id"].lower(), []), nics, pips) for vm in vms]

    def _instance(
        self,
        vm: dict[str, Any],
        statuses: list[dict[str, Any]],
        nics: dict[str, dict[str, Any]],
        pips: dict[str, str | None],
    ) -> Instance:
        tags = vm.get("tags") or {}
        props = vm.get("properties", {})
        spot = props.get("priority") == "Spot"
        private_ip = public_ip = None
        for ref in props.get("networkProfile", {}).get("networkInterfaces", []):
            nic = nics.get(ref.get("id", "").lower())
            for conf in (nic or {}).get("properties", {}).get("ipConfigurations", []):
                conf_props = conf.get("properties", {})
                private_ip = private_ip or conf_props.get("privateIPAddress")
                pip_id = (conf_props.get("publicIPAddress") or {}).get("id", "")
                public_ip = public_ip or pips.get(pip_id.lower())
        zones = vm.get("zones") or []
        return Instance(
            id=vm["name"],
            region=vm["location"],
            zone=zones[0] if zones else None,
            state=_state(statuses, spot=spot, stopped_by_us=STOPPED_TAG in tags),
            cluster=tags.get(CLUSTER_TAG, ""),
            owner=tags.get(OWNER_TAG, ""),
            rank=int(tags.get(RANK_TAG, "0")),
            workflow_id=tags.get(WORKFLOW_TAG) or None,
            instance_type=props.get("hardwareProfile", {}).get("vmSize"),
            spot=spot,
            public_ip=public_ip,
            private_ip=private_ip,
        )

    def create_instances(self, req: InstanceRequest) -> list[Instance]:
        where = Where(
            infra=self.cloud, region=req.region, zone=req.zone, instance_type=req.instance_type
        )
        image = _image_reference(req.image_id)
        if image is None:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"Azure image {req.image_id!r} is neither publisher:offer:sku:version nor a "
                "resource id",
                where=Where(infra=self.cloud, field="resources.image_id"),
            )
        if not req.ranks:
            return []
        try:
            subnet_id = self._ensure_network(req.region)
            nsg_id = self._ensure_nsg(req)
        except Exception as err:
            raise _mapped(err, where) from err
        names = {rank: _vm_name(req.cluster, req.owner, rank) for rank in req.ranks}

        def create_rank(rank: int) -> None:
            name = names[rank]
            try:
                self._create_rank(req, rank, name, subnet_id, nsg_id, image)
            except Exception as err:
                mapped = _mapped(err, where)
                if kind_of(mapped) in (ErrorKind.NO_CAPACITY, ErrorKind.QUOTA):
                    # The next try is another zone or region: a failed VM (and its zonal
                    # public IP) left here would block a retry with another zone.
                    self._delete_rank(name)
                raise mapped from err

        with ThreadPoolExecutor(max_workers=max(1, min(len(req.ranks), 16))) as pool:
            futures = [pool.submit(create_rank, rank) for rank in req.ranks]
            errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            # Capacity and quota first: the caller's failover depends on them.
            errors.sort(key=lambda e: kind_of(e) not in (ErrorKind.NO_CAPACITY, ErrorKind.QUOTA))
            raise errors[0]
        return [
            Instance(
                id=names[rank],
                region=req.region,
                zone=req.zone,
                state=NodeState.PENDING,
                cluster=req.cluster,
                owner=req.owner,
                rank=rank,
                workflow_id=req.workflow_id,
                instance_type=req.instance_type,
                spot=req.spot,
            )
            for rank in req.ranks
        ]

    def _create_rank(
        self,
        req: InstanceRequest,
        rank: int,
        name: str,
        subnet_id: str,
        nsg_id: str,
        image: dict[str, str],
    ) -> None:
        c = self._clients()
        tags = _tags(req, rank)
        zones = [req.zone] if req.zone else []
        pip = self._wait(
            c.network.public_ip_addresses.begin_create_or_update(
                self.resource_group,
                f"{name}-ip",
                {
                    "location": req.region,
                    "tags": tags,
                    "sku": {"name": "Standard"},
                    **({"zones": zones} if zones else {}),
                    "properties": {
                        "publicIPAllocationMethod": "Static",
                        "publicIPAddressVersion": "IPv4",
                        "deleteOption": "Delete",
                    },
                },
            )
        )
        nic = self._wait(
            c.network.network_interfaces.begin_create_or_update(
                self.resource_group,
                f"{name}-nic",
                {
                    "location": req.region,
                    "tags": tags,
                    "properties": {
                        "networkSecurityGroup": {"id": nsg_id},
                        "ipConfigurations": [
                            {
                                "name": "primary",
                                "properties": {
                                    "subnet": {"id": subnet_id},
                                    "privateIPAllocationMethod": "Dynamic",
                                    "publicIPAddress": {"id": pip["id"]},
                                },
                            }
                        ],
                    },
                },
            )
        )
        self._wait(
            c.compute.virtual_machines.begin_create_or_update(
                self.resource_group, name, _vm_body(req, name, tags, zones, image, nic["id"])
            )
        )

    def _ensure_network(self, region: str) -> str:
        """The subnet of the region's shared network (made on first use, kept after)."""
        from azure.core.exceptions import ResourceNotFoundError

        c = self._clients()
        name = f"skyloom-{region.lower()}"
        try:
            vnet = c.network.virtual_networks.get(self.resource_group, name).as_dict()
        except ResourceNotFoundError:
            vnet = self._wait(
                c.network.virtual_networks.begin_create_or_update(
                    self.resource_group,
                    name,
                    {
                        "location": region,
                        "tags": {"skyloom": "shared"},
                        "properties": {
                            "addressSpace": {"addressPrefixes": [VNET_PREFIX]},
                            "subnets": [
                                {"name": "skyloom", "properties": {"addressPrefix": SUBNET_PREFIX}}
                            ],
                        },
                    },
                )
            )
        return f"{vnet['id']}/subnets/skyloom"

    def _ensure_nsg(self, req: InstanceRequest) -> str:
        """The owner's NSG: SSH and the task's ports, inbound from anywhere."""
        rules: list[dict[str, Any]] = [_allow_rule("skyloom-ssh", 1000, ["22"])]
        if req.ports:
            rules.append(_allow_rule("skyloom-ports", 1010, list(req.ports)))
        nsg = self._wait(
            self._clients().network.network_security_groups.begin_create_or_update(
                self.resource_group,
                _nsg_name(req.cluster, req.owner, req.region),
                {
                    "location": req.region,
                    "tags": {k: v for k, v in _tags(req, 0).items() if k != RANK_TAG},
                    "properties": {"securityRules": rules},
                },
            )
        )
        return str(nsg["id"])

    def delete_instances(self, region: str, owner: str) -> None:
        try:
            self._delete_owner(region, owner)
        except Exception as err:
            raise _mapped(err, Where(infra=self.cloud, region=region)) from err

    def _delete_owner(self, region: str, owner: str) -> None:
        c = self._clients()
        rg = self.resource_group

        def owned(resources: Iterable[dict[str, Any]]) -> list[str]:
            return [
                r["name"]
                for r in resources
                if _ours(r, owner) and r.get("location", "").lower() == region.lower()
            ]

        # The VM takes its NIC, public IP and OS disk along (deleteOption Delete); the
        # sweeps after it catch what a create cut off half-way left without a VM.
        self._wait_all(
            c.compute.virtual_machines.begin_delete,
            owned(_dicts(c.compute.virtual_machines.list(rg))),
        )
        self._wait_all(
            c.network.network_interfaces.begin_delete,
            owned(_dicts(c.network.network_interfaces.list(rg))),
        )
        self._wait_all(
            c.network.public_ip_addresses.begin_delete,
            owned(_dicts(c.network.public_ip_addresses.list(rg))),
        )
        # Azure does not copy a VM's tags to its OS disk: the owner's disks are known by
        # the name skyloom gave them, which carries the owner's digest.
        disk_name = re.compile(rf"-{digest(owner, 8)}-\d+-osdisk$")
        disks = [
            d["name"]
            for d in _dicts(c.compute.disks.list_by_resource_group(rg))
            if d.get("location", "").lower() == region.lower()
            and (_ours(d, owner) or disk_name.search(d["name"]))
        ]
        self._wait_all(c.compute.disks.begin_delete, disks)
        self._wait_all(
            c.network.network_security_groups.begin_delete,
            owned(_dicts(c.network.network_security_groups.list(rg))),
        )

    def _delete_rank(self, name: str) -> None:
        """Best-effort removal of one rank's VM, NIC, public IP and disk."""
        c = self._clients()
        steps = [
            (c.compute.virtual_machines.begin_delete, name),
            (c.network.network_interfaces.begin_delete, f"{name}-nic"),
            (c.network.public_ip_addresses.begin_delete, f"{name}-ip"),
            (c.compute.disks.begin_delete, f"{name}-osdisk"),
        ]
        for begin, resource in steps:
            try:
                self._wait(begin(self.resource_group, resource))
            except Exception:
                continue  # the original error is what the caller needs

    def stop_instances(self, region: str, owner: str) -> None:
        # Tag first: a crash between the two leaves a running VM tagged (still UP), never
        # a deallocated one untagged (which would read as an eviction).
        self._power(region, owner, stop=True)

    def start_instances(self, region: str, owner: str) -> None:
        # Start first, untag after: a crash between leaves a running VM tagged (still UP).
        self._power(region, owner, stop=False)

    def _power(self, region: str, owner: str, *, stop: bool) -> None:
        try:
            c = self._clients()
            vms = [
                vm
                for vm in _dicts(c.compute.virtual_machines.list(self.resource_group))
                if _ours(vm, owner) and vm.get("location", "").lower() == region.lower()
            ]

            def one(vm: dict[str, Any]) -> None:
                tags = dict(vm.get("tags") or {})
                if stop:
                    tags[STOPPED_TAG] = "true"
                    self._wait(
                        c.compute.virtual_machines.begin_update(
                            self.resource_group, vm["name"], {"tags": tags}
                        )
                    )
                    self._wait(
                        c.compute.virtual_machines.begin_deallocate(self.resource_group, vm["name"])
                    )
                else:
                    self._wait(
                        c.compute.virtual_machines.begin_start(self.resource_group, vm["name"])
                    )
                    if tags.pop(STOPPED_TAG, None) is not None:
                        self._wait(
                            c.compute.virtual_machines.begin_update(
                                self.resource_group, vm["name"], {"tags": tags}
                            )
                        )

            _run_all(one, vms)
        except Exception as err:
            raise _mapped(err, Where(infra=self.cloud, region=region)) from err

    # -- operations --------------------------------------------------------------------

    def _wait(self, poller: Any) -> Any:
        """The operation's result as a plain dict (None for deletes), within wait_seconds."""
        poller.wait(self._wait_seconds)
        if not poller.done():
            raise TimeoutError(f"Azure operation still running after {self._wait_seconds:.0f}s")
        result = poller.result()
        return result.as_dict() if result is not None else None

    def _wait_all(self, begin: Callable[..., Any], names: list[str]) -> None:
        """Start every delete, then wait for all: they run side by side in Azure."""
        from azure.core.exceptions import ResourceNotFoundError

        pollers = []
        for name in names:
            try:
                pollers.append(begin(self.resource_group, name))
            except ResourceNotFoundError:
                continue  # deleted since it was listed (ARM says 204 or 404): done
        for poller in pollers:
            try:
                self._wait(poller)
            except ResourceNotFoundError:
                continue


# -- pure helpers ----------------------------------------------------------------------


def _run_all(fn: Callable[[Any], None], items: list[Any]) -> None:
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(len(items), 16)) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


def _dicts(items: Iterable[Any]) -> list[dict[str, Any]]:
    """SDK models as the wire JSON (camelCase keys), the shape ARM documents."""
    return [item.as_dict() for item in items]


def _ours(resource: dict[str, Any], owner: str | None) -> bool:
    tags = resource.get("tags") or {}
    return OWNER_TAG in tags and (owner is None or tags[OWNER_TAG] == owner)


def _state(statuses: list[dict[str, Any]], *, spot: bool, stopped_by_us: bool) -> NodeState:
    codes = [str(s.get("code", "")).lower() for s in statuses]
    power = next((c.split("/", 1)[1] for c in codes if c.startswith("powerstate/")), None)
    provisioning = next((c.split("/")[1] for c in codes if c.startswith("provisioningstate/")), "")
    if power == "running":
        return NodeState.UP
    if power in {"stopped", "deallocated", "stopping", "deallocating"}:
        if spot and not stopped_by_us and power in {"deallocated", "deallocating"}:
            return NodeState.PREEMPTED
        return NodeState.STOPPED
    if provisioning == "failed":
        # The capacity went away after create returned (or never came): callers recover
        # as from a preemption.
        return NodeState.PREEMPTED
    return NodeState.PENDING  # creating, starting, or no power state reported yet


def _slug(cluster: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", cluster.lower()).strip("-")
    return re.sub(r"-{2,}", "-", slug)[:40].strip("-") or "sky"


def _vm_name(cluster: str, owner: str, rank: int) -> str:
    """At most 54 characters of letters, digits and hyphens (Azure allows 64), unique per
    (owner, rank), readable by cluster."""
    return f"{_slug(cluster)}-{digest(owner, 8)}-{rank}"


def _nsg_name(cluster: str, owner: str, region: str) -> str:
    # Per region too: after a failover the owner's NSG in the first region may remain
    # until that region is cleaned, and a resource cannot move between regions.
    return f"{_slug(cluster)}-{digest(owner, 8)}-{region.lower()}-nsg"


def _tags(req: InstanceRequest, rank: int) -> dict[str, str]:
    ours = {
        OWNER_TAG: req.owner,
        CLUSTER_TAG: req.cluster,
        RANK_TAG: str(rank),
        WORKFLOW_TAG: req.workflow_id or "",
    }
    return {**req.labels, **ours}


def _image_reference(image_id: str | None) -> dict[str, str] | None:
    if image_id is None:
        return dict(UBUNTU)
    if image_id.startswith("/"):
        return {"id": image_id}
    parts = image_id.split(":")
    if len(parts) == 4 and all(parts):
        return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))
    return None


def _allow_rule(name: str, priority: int, ports: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "properties": {
            "priority": priority,
            "direction": "Inbound",
            "access": "Allow",
            "protocol": "Tcp",
            "sourceAddressPrefix": "*",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRanges": ports,
        },
    }


def _vm_body(
    req: InstanceRequest,
    name: str,
    tags: dict[str, str],
    zones: list[str],
    image: dict[str, str],
    nic_id: str,
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "hardwareProfile": {"vmSize": req.instance_type},
        "storageProfile": {
            "imageReference": image,
            "osDisk": {
                "name": f"{name}-osdisk",
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "diskSizeGB": req.disk_size_gb,
                "managedDisk": {
                    "storageAccountType": DISK_SKUS.get(
                        req.disk_tier or "medium", "StandardSSD_LRS"
                    )
                },
                "deleteOption": "Delete",
            },
        },
        "osProfile": {
            "computerName": name,
            "adminUsername": req.ssh_user,
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {
                    "publicKeys": [
                        {
                            "path": f"/home/{req.ssh_user}/.ssh/authorized_keys",
                            "keyData": req.ssh_public_key,
                        }
                    ]
                },
            },
        },
        "networkProfile": {
            "networkInterfaces": [
                {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}
            ]
        },
    }
    if req.spot:
        # maxPrice -1: pay up to the on-demand price, so Azure evicts for capacity only.
        props.update(priority="Spot", evictionPolicy="Deallocate", billingProfile={"maxPrice": -1})
    body: dict[str, Any] = {"location": req.region, "tags": tags, "properties": props}
    if zones:
        body["zones"] = zones
    return body


# -- errors ----------------------------------------------------------------------------


def _error_codes(err: BaseException) -> tuple[set[str], str]:
    """ARM error codes (the top one and its details') and the target, if any."""
    error = getattr(err, "error", None)
    codes: set[str] = set()
    target = ""
    stack = [error] if error is not None else []
    while stack:
        e = stack.pop()
        if getattr(e, "code", None):
            codes.add(str(e.code))
        target = target or str(getattr(e, "target", "") or "")
        stack.extend(getattr(e, "details", None) or [])
    return codes, target


def _mapped(err: Exception, where: Where) -> Exception:
    """The provider_error for an SDK failure, or the failure itself when transient."""
    if isinstance(err, ApplicationError):
        return err
    codes, target = _error_codes(err)
    status = getattr(err, "status_code", None)
    message = f"azure {where.region or ''}: {_first_line(err)}"
    if codes & NO_CAPACITY_CODES:
        return provider_error(ErrorKind.NO_CAPACITY, message, where=where)
    if "QuotaExceeded" in codes or ("OperationNotAllowed" in codes and "quota" in str(err).lower()):
        return provider_error(ErrorKind.QUOTA, message, where=where)
    if status in (401, 403) or codes & CREDENTIAL_CODES or _is_credential_failure(err):
        return provider_error(ErrorKind.CREDENTIALS, message, where=where)
    image_target = "image" in target.lower()
    size_target = "vmsize" in target.lower()
    if codes & IMAGE_CODES or ("InvalidParameter" in codes and image_target):
        return provider_error(
            ErrorKind.INVALID_SPEC, message, where=replace(where, field="resources.image_id")
        )
    if "InvalidParameter" in codes and size_target:
        return provider_error(
            ErrorKind.INVALID_SPEC, message, where=replace(where, field="resources.instance_type")
        )
    return err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_credential_failure(err: Exception) -> bool:
    """A credential that cannot get a token at all (no login, bad secret) fails before
    any request: azure-identity raises ClientAuthenticationError without a response."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
    except ImportError:
        return False
    return isinstance(err, ClientAuthenticationError)


# -- test endpoints --------------------------------------------------------------------


class _FixedToken:
    """The credential for an explicit endpoint given none: a token the fake accepts."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("skyloom-test-token", int(time.time()) + 3600)


def _plain_http_policy(endpoint: str) -> Any:
    """azure-core sends bearer tokens over https only, unless a request carries the
    `enforce_https=False` option (its documented opt-out for local testing). This policy
    sets that option on each request, and only for a loopback endpoint, so a token can
    never go out in the clear to another host."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    host = urlsplit(endpoint).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"plain http is allowed only to a loopback endpoint, not {endpoint}")

    class AllowPlainHttp(SansIOHTTPPolicy):
        def on_request(self, request: Any) -> None:
            if urlsplit(request.http_request.url).hostname == host:
                request.context.options["enforce_https"] = False

    return AllowPlainHttp()
