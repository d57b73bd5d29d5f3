"""A fake Azure Resource Manager: the compute and network REST calls AzureAPI makes,
served over HTTP on loopback so the real Azure SDK (clients, pipeline, LRO pollers)
drives it. State lives in memory; tests steer it through plain methods (exhaust, quota,
evict, deny, ...) and read it back through views of every resource."""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Sizes the fake's regions offer; anything else is rejected as Azure rejects a typo.
DEFAULT_SIZES = frozenset(
    {"Standard_B2s", "Standard_D2s_v5", "Standard_D4s_v5", "Standard_NC24ads_A100_v4"}
)
# Marketplace images (publisher, offer, sku) the fake knows.
DEFAULT_IMAGES = frozenset(
    {
        ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
        ("Canonical", "ubuntu-24_04-lts", "server"),
    }
)

_SCOPED = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<ns>Microsoft\.\w+)/(?P<type>\w+)(?:/(?P<name>[^/]+)(?:/(?P<action>\w+))?)?$",
    re.IGNORECASE,
)
_SUBSCRIPTION_VMS = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Compute/virtualMachines$", re.IGNORECASE
)
_OPERATION = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.\w+/locations/[^/]+/"
    r"(?P<kind>operations|operationResults)/(?P<op>[^/]+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Request:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


class ArmError(Exception):
    """An ARM error response: `{"error": {"code", "message", "target"}}` with a status."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"code": code, "message": message}
        if target:
            self.body["target"] = target


@dataclass
class _Operation:
    """An async operation: InProgress on its first poll, then done (finish runs once)."""

    id: str
    finish: Any  # () -> ArmError | None, applied when the operation completes
    polls: int = 0
    status: str = "InProgress"
    error: dict[str, Any] | None = None


class FakeARM:
    """The fake: start() serves it; url is what AzureAPI takes as endpoint."""

    def __init__(
        self,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_groups: tuple[str, ...] = ("skyloom",),
        *,
        sizes: frozenset[str] = DEFAULT_SIZES,
        images: frozenset[tuple[str, str, str]] = DEFAULT_IMAGES,
        page_size: int = 2,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_groups = {rg.lower() for rg in resource_groups}
        self.sizes = set(sizes)
        self.images = set(images)
        self.page_size = page_size
        self.requests: list[Request] = []
        self._resources: dict[str, dict[str, Any]] = {}  # lowercased id -> body
        self._power: dict[str, str] = {}  # VM id -> running | deallocated | stopped ...
        self._ops: dict[str, _Operation] = {}
        self._exhausted: set[tuple[str, str | None]] = set()
        self._sku_unavailable: set[str] = set()
        self._quota: dict[str, str] = {}
        self._denied: tuple[int, str] | None = None
        self._private_ips = (f"127.0.20.{n}" for n in itertools.count(1))
        self._public_ips = (f"127.0.40.{n}" for n in itertools.count(1))
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeARM:
        fake = self

        class Handler(_Handler):
            arm = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- test controls -----------------------------------------------------------------

    def exhaust(self, region: str, zone: str | None = None) -> None:
        """VMs in the region (or only in that zone) fail to allocate. Azure accepts the PUT
        (201) and fails the async operation with AllocationFailed, or
        ZonalAllocationFailed for a zonal VM; the VM stays behind in provisioning state
        Failed, as a real one does."""
        self._exhausted.add((region.lower(), zone))

    def sku_not_available(self, size: str) -> None:
        """The size is restricted for the subscription: the PUT is refused at once (409)."""
        self._sku_unavailable.add(size.lower())

    def quota(self, region: str, code: str = "OperationNotAllowed") -> None:
        """The region's core quota is used up: PUT refused at once (409). Older API
        versions answer OperationNotAllowed with quota wording, newer QuotaExceeded."""
        self._quota[region.lower()] = code

    def evict(self, vm_name: str) -> None:
        """Azure takes a Spot VM back: with evictionPolicy Deallocate it is deallocated."""
        with self._lock:
            vm = self._find("virtualMachines", vm_name)
            assert vm["properties"].get("priority") == "Spot", f"{vm_name} is not a Spot VM"
            self._power[vm["id"].lower()] = "deallocated"

    def deny(self, status: int = 401, code: str = "AuthenticationFailed") -> None:
        """Every request fails authentication (401) or authorization (403)."""
        self._denied = (status, code)

    def allow(self) -> None:
        self._denied = None

    # -- views -------------------------------------------------------------------------

    def resources(self, type_: str) -> list[dict[str, Any]]:
        """Every resource of a type (e.g. "virtualMachines"), as GET would return it."""
        with self._lock:
            return [
                self._view(r)
                for r in self._resources.values()
                if r["type"].split("/")[-1].lower() == type_.lower()
            ]

    def vms(self) -> list[dict[str, Any]]:
        return self.resources("virtualMachines")

    def nics(self) -> list[dict[str, Any]]:
        return self.resources("networkInterfaces")

    def public_ips(self) -> list[dict[str, Any]]:
        return self.resources("publicIPAddresses")

    def disks(self) -> list[dict[str, Any]]:
        return self.resources("disks")

    def nsgs(self) -> list[dict[str, Any]]:
        return self.resources("networkSecurityGroups")

    def vnets(self) -> list[dict[str, Any]]:
        return self.resources("virtualNetworks")

    def vm(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._view(self._find("virtualMachines", name))

    def power_state(self, name: str) -> str:
        with self._lock:
            return self._power[self._find("virtualMachines", name)["id"].lower()]

    def bodies(self, method: str, type_: str) -> list[Any]:
        """The bodies of every request of that verb on that resource type."""
        return [
            r.body
            for r in list(self.requests)
            if r.method == method and f"/{type_.lower()}/" in r.path.lower() + "/"
        ]

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path.rstrip("/")
        self.requests.append(Request(method, path, query, body))
        with self._lock:
            try:
                if self._denied is not None:
                    status, code = self._denied
                    raise ArmError(status, code, "The client could not be authenticated.")
                return self._route(method, path, query, body)
            except ArmError as err:
                return err.status, {}, {"error": err.body}

    def _route(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any]:
        if m := _OPERATION.match(path):
            return self._poll(m["kind"].lower(), m["op"])
        if m := _SUBSCRIPTION_VMS.match(path):
            self._check_subscription(m["sub"])
            self._check_api_version("virtualmachines", query)
            vms = [r for r in self._resources.values() if r["type"] == _TYPES["virtualmachines"]]
            views = [self._status_only(r) if query.get("statusOnly") == "true" else r for r in vms]
            return self._page(views, query, path)
        m = _SCOPED.match(path)
        if not m:
            raise ArmError(404, "InvalidResourceType", f"no such path {path}")
        self._check_subscription(m["sub"])
        if m["rg"].lower() not in self.resource_groups:
            raise ArmError(
                404, "ResourceGroupNotFound", f"Resource group '{m['rg']}' could not be found."
            )
        type_ = m["type"].lower()
        if type_ not in _TYPES or _TYPES[type_].split("/")[0].lower() != m["ns"].lower():
            raise ArmError(400, "InvalidResourceType", f"unknown type {m['ns']}/{m['type']}")
        self._check_api_version(type_, query)
        prefix = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{_TYPES[type_]}"
        if m["name"] is None:
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", method)
            rows = [
                r
                for r in self._resources.values()
                if r["id"].lower().startswith(prefix.lower() + "/")
            ]
            return self._page(rows, query, path)
        rid = f"{prefix}/{m['name']}"
        if m["action"]:
            return self._action(method, rid, m["action"].lower())
        if method == "GET":
            return 200, {}, self._view(self._get(rid))
        if method == "PUT":
            return self._put(type_, rid, m["name"], body)
        if method == "PATCH":
            return self._patch(rid, body)
        if method == "DELETE":
            return self._delete(type_, rid)
        raise ArmError(405, "MethodNotAllowed", method)

    # -- async operations --------------------------------------------------------------

    def _operation(self, ns: str, location: str, finish: Any) -> dict[str, str]:
        """Start an operation; its URLs point back at this fake, as ARM's point at ARM."""
        op = _Operation(id=str(uuid.uuid4()), finish=finish)
        self._ops[op.id] = op
        base = (
            f"{self.url}/subscriptions/{self.subscription_id}/providers/{ns}/locations/{location}"
        )
        api = "api-version=2026-01-01"
        return {
            "Azure-AsyncOperation": f"{base}/operations/{op.id}?{api}",
            "Location": f"{base}/operationResults/{op.id}?{api}",
        }

    def _poll(self, kind: str, op_id: str) -> tuple[int, dict[str, str], Any]:
        op = self._ops.get(op_id)
        if op is None:
            raise ArmError(404, "OperationNotFound", op_id)
        if op.status == "InProgress":
            if op.polls == 0:
                op.polls += 1
            else:
                failure = op.finish()
                op.status, op.error = ("Failed", failure.body) if failure else ("Succeeded", None)
        if kind == "operationresults":
            return (202, {}, None) if op.status == "InProgress" else (204, {}, None)
        body: dict[str, Any] = {"name": op.id, "status": op.status}
        if op.error:
            body["error"] = op.error
        return 200, {}, body

    # -- resources ---------------------------------------------------------------------

    def _put(self, type_: str, rid: str, name: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict) or "location" not in body:
            raise ArmError(400, "InvalidRequestContent", "the body needs a location")
        existing = self._resources.get(rid.lower())
        if existing and existing["location"] != body["location"].lower():
            raise ArmError(
                400,
                "InvalidResourceLocation",
                f"The resource '{name}' already exists in location '{existing['location']}'.",
            )
        resource = copy.deepcopy(body)
        resource.update(id=rid, name=name, type=_TYPES[type_])
        resource["location"] = resource["location"].lower()
        props = resource.setdefault("properties", {})
        ns = _TYPES[type_].split("/")[0]
        if type_ == "virtualmachines":
            finish = self._put_vm(rid, resource, existing)
        else:
            getattr(self, f"_put_{type_}")(rid, resource, existing)

            def finish() -> None:
                props["provisioningState"] = "Succeeded"

        props["provisioningState"] = "Updating" if existing else "Creating"
        self._resources[rid.lower()] = resource
        headers = self._operation(ns, resource["location"], finish)
        return (200 if existing else 201), headers, self._view(resource)

    def _put_virtualnetworks(self, rid: str, vnet: dict[str, Any], _: Any) -> None:
        for subnet in vnet["properties"].get("subnets", []):
            subnet["id"] = f"{rid}/subnets/{subnet['name']}"

    def _put_networksecuritygroups(self, rid: str, nsg: dict[str, Any], _: Any) -> None:
        for rule in nsg["properties"].get("securityRules", []):
            rule["id"] = f"{rid}/securityRules/{rule['name']}"

    def _put_publicipaddresses(
        self, rid: str, pip: dict[str, Any], existing: dict[str, Any] | None
    ) -> None:
        if existing and existing.get("zones") != pip.get("zones"):
            raise ArmError(400, "ZonesCannotBeChanged", "zones of a public IP cannot change")
        old = (existing or {}).get("properties", {}).get("ipAddress")
        pip["properties"]["ipAddress"] = old or next(self._public_ips)

    def _put_networkinterfaces(
        self, rid: str, nic: dict[str, Any], existing: dict[str, Any] | None
    ) -> None:
        props = nic["properties"]
        if nsg := props.get("networkSecurityGroup"):
            self._ref(nsg["id"], "networkSecurityGroup")
        old = (existing or {}).get("properties", {}).get("ipConfigurations", [])
        for i, conf in enumerate(props.get("ipConfigurations", [])):
            conf_props = conf.setdefault("properties", {})
            self._subnet(conf_props.get("subnet", {}).get("id", ""))
            if pip := conf_props.get("publicIPAddress"):
                self._ref(pip["id"], "publicIPAddress")
            conf["id"] = f"{rid}/ipConfigurations/{conf['name']}"
            kept = old[i]["properties"]["privateIPAddress"] if i < len(old) else None
            conf_props["privateIPAddress"] = kept or next(self._private_ips)
        if existing and "virtualMachine" in existing["properties"]:
            props["virtualMachine"] = existing["properties"]["virtualMachine"]

    def _put_vm(self, rid: str, vm: dict[str, Any], existing: dict[str, Any] | None) -> Any:
        """Validate a VM PUT as Azure does before accepting it; return what completes it."""
        props = vm["properties"]
        region, zones = vm["location"], vm.get("zones") or []
        zone = zones[0] if zones else None
        if existing and (existing.get("zones") or []) != zones:
            raise ArmError(
                409,
                "PropertyChangeNotAllowed",
                "Changing property 'zones' is not allowed.",
                "zones",
            )
        size = props.get("hardwareProfile", {}).get("vmSize", "")
        if size not in self.sizes:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The value {size} provided for the VM size is not valid.",
                "vmSize",
            )
        image = props.get("storageProfile", {}).get("imageReference", {})
        if "id" in image:
            if image["id"].lower() not in self._resources:
                raise ArmError(
                    400, "InvalidParameter", "The image does not exist.", "imageReference"
                )
        elif (image.get("publisher"), image.get("offer"), image.get("sku")) not in self.images:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The value of parameter imageReference is invalid: {image}",
                "imageReference",
            )
        if size.lower() in self._sku_unavailable:
            raise ArmError(
                409,
                "SkuNotAvailable",
                f"The requested VM size {size} is currently not available in location "
                f"'{region}'. Please try another size or deploy to a different location.",
            )
        if region in self._quota:
            raise ArmError(
                409,
                self._quota[region],
                "Operation could not be completed as it results in exceeding approved "
                f"standardDSv5Family Cores quota. Location: {region}.",
            )
        nics = [n["id"] for n in props.get("networkProfile", {}).get("networkInterfaces", [])]
        for nic_id in nics:
            attached = self._ref(nic_id, "networkInterface")["properties"].get("virtualMachine")
            if attached and attached["id"].lower() != rid.lower():
                raise ArmError(400, "NicInUse", f"{nic_id} is attached to {attached['id']}")
            self._resources[nic_id.lower()]["properties"]["virtualMachine"] = {"id": rid}
        props["vmId"] = (existing or {}).get("properties", {}).get("vmId") or str(uuid.uuid4())
        self._power.setdefault(rid.lower(), "starting")
        exhausted = (region, zone) in self._exhausted or (region, None) in self._exhausted

        def finish() -> ArmError | None:
            if exhausted:
                props["provisioningState"] = "Failed"
                self._power.pop(rid.lower(), None)
                code = "ZonalAllocationFailed" if zone else "AllocationFailed"
                return ArmError(
                    200,
                    code,
                    "Allocation failed. We do not have sufficient capacity for the requested "
                    f"VM size in this {'zone' if zone else 'region'}.",
                )
            os_disk = props["storageProfile"].setdefault("osDisk", {})
            self._make_os_disk(rid, vm, os_disk, zones)
            props["provisioningState"] = "Succeeded"
            self._power[rid.lower()] = "running"
            return None

        return finish

    def _make_os_disk(
        self, vm_id: str, vm: dict[str, Any], os_disk: dict[str, Any], zones: list[str]
    ) -> None:
        # Azure does not copy the VM's tags to the disk it makes from the image.
        name = os_disk.get("name") or f"{vm['name']}_OsDisk_1_{uuid.uuid4().hex}"
        disk_id = f"{vm_id.split('/providers/')[0]}/providers/Microsoft.Compute/disks/{name}"
        sku = os_disk.get("managedDisk", {}).get("storageAccountType", "StandardSSD_LRS")
        self._resources.setdefault(
            disk_id.lower(),
            {
                "id": disk_id,
                "name": name,
                "type": "Microsoft.Compute/disks",
                "location": vm["location"],
                "zones": zones,
                "managedBy": vm_id,
                "sku": {"name": sku},
                "properties": {
                    "diskSizeGB": os_disk.get("diskSizeGB", 30),
                    "diskState": "Attached",
                    "osType": "Linux",
                    "provisioningState": "Succeeded",
                },
            },
        )
        os_disk["name"] = name
        os_disk.setdefault("managedDisk", {})["id"] = disk_id

    def _patch(self, rid: str, body: Any) -> tuple[int, dict[str, str], Any]:
        resource = self._get(rid)
        if "tags" in body:
            resource["tags"] = dict(body["tags"])
        headers = self._operation(
            resource["type"].split("/")[0], resource["location"], lambda: None
        )
        return 200, headers, self._view(resource)

    def _action(self, method: str, rid: str, action: str) -> tuple[int, dict[str, str], Any]:
        vm = self._get(rid)
        if method != "POST" or action not in {"deallocate", "start", "poweroff"}:
            raise ArmError(405, "MethodNotAllowed", f"{method} {action}")
        target = {"deallocate": "deallocated", "start": "running", "poweroff": "stopped"}[action]
        self._power[rid.lower()] = {"deallocated": "deallocating", "running": "starting"}.get(
            target, "stopping"
        )

        def finish() -> None:
            self._power[rid.lower()] = target

        return 202, self._operation("Microsoft.Compute", vm["location"], finish), None

    def _delete(self, type_: str, rid: str) -> tuple[int, dict[str, str], Any]:
        resource = self._resources.get(rid.lower())
        if resource is None:
            return 204, {}, None  # ARM answers 204 for a resource that is already gone
        props = resource["properties"]
        if type_ == "networkinterfaces" and props.get("virtualMachine"):
            raise ArmError(400, "NicInUse", f"{rid} is attached to a virtual machine")
        if type_ == "publicipaddresses" and self._referrers(rid):
            raise ArmError(400, "PublicIPAddressInUse", f"{rid} is in use by a network interface")
        if type_ == "networksecuritygroups" and self._referrers(rid):
            raise ArmError(400, "InUseNetworkSecurityGroupCannotBeDeleted", f"{rid} is in use")
        if type_ == "disks" and resource.get("managedBy"):
            raise ArmError(409, "OperationNotAllowed", f"Disk {rid} is attached to a VM")
        if type_ == "virtualnetworks" and self._referrers(rid):
            raise ArmError(400, "InUseSubnetCannotBeDeleted", f"{rid} has NICs")
        props["provisioningState"] = "Deleting"

        def finish() -> None:
            if type_ == "virtualmachines":
                self._cascade_vm(resource)
            self._resources.pop(rid.lower(), None)

        headers = self._operation(resource["type"].split("/")[0], resource["location"], finish)
        return 202, headers, None

    def _cascade_vm(self, vm: dict[str, Any]) -> None:
        """What deleting a VM takes along: the NICs, public IPs and OS disk whose
        deleteOption is Delete; the rest is only detached."""
        self._power.pop(vm["id"].lower(), None)
        props = vm["properties"]
        for ref in props.get("networkProfile", {}).get("networkInterfaces", []):
            nic = self._resources.get(ref["id"].lower())
            if nic is None:
                continue
            nic["properties"].pop("virtualMachine", None)
            if ref.get("properties", {}).get("deleteOption") != "Delete":
                continue
            self._resources.pop(ref["id"].lower())
            for conf in nic["properties"].get("ipConfigurations", []):
                pip_ref = conf["properties"].get("publicIPAddress")
                pip = self._resources.get(pip_ref["id"].lower()) if pip_ref else None
                if pip and pip["properties"].get("deleteOption") == "Delete":
                    self._resources.pop(pip["id"].lower())
        os_disk = props.get("storageProfile", {}).get("osDisk", {})
        disk_id = os_disk.get("managedDisk", {}).get("id", "").lower()
        if disk := self._resources.get(disk_id):
            if os_disk.get("deleteOption") == "Delete":
                self._resources.pop(disk_id)
            else:
                disk.pop("managedBy", None)
                disk["properties"]["diskState"] = "Unattached"

    # -- helpers -----------------------------------------------------------------------

    def _check_subscription(self, sub: str) -> None:
        if sub != self.subscription_id:
            raise ArmError(
                404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found."
            )

    def _check_api_version(self, type_: str, query: dict[str, str]) -> None:
        version = query.get("api-version")
        if version is None:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version is missing.")
        if version != _API_VERSIONS[type_]:
            raise ArmError(
                400,
                "NoRegisteredProviderFound",
                f"No registered resource provider found for API version '{version}'.",
            )

    def _get(self, rid: str) -> dict[str, Any]:
        resource = self._resources.get(rid.lower())
        if resource is None:
            kind, name = rid.split("/providers/")[1].rsplit("/", 1)
            raise ArmError(404, "ResourceNotFound", f"The Resource '{kind}/{name}' was not found.")
        return resource

    def _find(self, type_: str, name: str) -> dict[str, Any]:
        for r in self._resources.values():
            if (
                r["type"].lower().endswith("/" + type_.lower())
                and r["name"].lower() == name.lower()
            ):
                return r
        raise KeyError(name)

    def _ref(self, rid: str, what: str) -> dict[str, Any]:
        resource = self._resources.get(rid.lower())
        if resource is None:
            raise ArmError(400, "InvalidResourceReference", f"{what} {rid} was not found.")
        return resource

    def _subnet(self, subnet_id: str) -> None:
        vnet_id, _, name = subnet_id.partition("/subnets/")
        vnet = self._ref(vnet_id, "subnet")
        if name not in {s["name"] for s in vnet["properties"].get("subnets", [])}:
            raise ArmError(400, "InvalidResourceReference", f"subnet {subnet_id} was not found.")

    def _referrers(self, rid: str) -> list[str]:
        """NICs that point at rid (a public IP, an NSG, a subnet of a vnet)."""
        needle = rid.lower()
        return [
            r["id"]
            for r in self._resources.values()
            if r["type"] == _TYPES["networkinterfaces"]
            and any(needle + end in json.dumps(r).lower() for end in ('"', "/"))
        ]

    def _view(self, resource: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(resource)
        view.setdefault("tags", {})
        return view

    def _status_only(self, vm: dict[str, Any]) -> dict[str, Any]:
        """What `statusOnly=true` returns: run-time status and no tags or profiles."""
        statuses = [
            {
                "code": f"ProvisioningState/{vm['properties']['provisioningState'].lower()}",
                "level": "Info",
            }
        ]
        if power := self._power.get(vm["id"].lower()):
            statuses.append({"code": f"PowerState/{power}", "level": "Info"})
        return {
            "id": vm["id"],
            "name": vm["name"],
            "type": vm["type"],
            "location": vm["location"],
            "properties": {
                "vmId": vm["properties"]["vmId"],
                "instanceView": {"statuses": statuses},
            },
        }

    def _page(
        self, rows: list[dict[str, Any]], query: dict[str, str], path: str
    ) -> tuple[int, dict[str, str], Any]:
        start = int(query.get("$skiptoken", "0"))
        page = [self._view(r) for r in rows[start : start + self.page_size]]
        body: dict[str, Any] = {"value": page}
        if start + self.page_size < len(rows):
            rest = {k: v for k, v in query.items() if k != "$skiptoken"}
            qs = "&".join(f"{k}={v}" for k, v in rest.items())
            body["nextLink"] = f"{self.url}{path}?{qs}&$skiptoken={start + self.page_size}"
        return 200, {}, body


# ARM type of each collection name the fake serves (lowercased, as routed).
_TYPES = {
    "virtualmachines": "Microsoft.Compute/virtualMachines",
    "disks": "Microsoft.Compute/disks",
    "virtualnetworks": "Microsoft.Network/virtualNetworks",
    "networksecuritygroups": "Microsoft.Network/networkSecurityGroups",
    "publicipaddresses": "Microsoft.Network/publicIPAddresses",
    "networkinterfaces": "Microsoft.Network/networkInterfaces",
}


# The api-version each type is served at: the ones the installed SDK sends.
_API_VERSIONS = {
    "virtualmachines": "2026-04-01",
    "disks": "2026-03-02",
    "virtualnetworks": "2026-03-01",
    "networksecuritygroups": "2026-03-01",
    "publicipaddresses": "2026-03-01",
    "networkinterfaces": "2026-03-01",
}


class _Handler(BaseHTTPRequestHandler):
    arm: FakeARM
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each response waits for the
    # client's delayed ACK (~40 ms), which adds up over hundreds of polls.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        status, headers, payload = self.arm.handle(self.command, self.path, body)
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the requests log is the record; stderr stays quiet
