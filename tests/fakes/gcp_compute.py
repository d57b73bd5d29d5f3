"""A fake of the GCP Compute Engine REST API (v1), for driving the real
google-cloud-compute SDK over HTTP in tests.

It serves only the paths skyloom calls, with GCP's JSON shapes, keeps its state in
memory, and gives every instance loopback addresses. Failures GCP produces on its own
(a zone out of capacity, a quota, a spot preemption, a revoked credential) are switched
on through plain methods, so tests inject them in the backend, never in skyloom.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE = "https://www.googleapis.com/compute/v1"

REGIONS: dict[str, list[str]] = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "us-east1": ["us-east1-b", "us-east1-c", "us-east1-d"],
    "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
}
ZONES = {zone: region for region, zones in REGIONS.items() for zone in zones}

MACHINE_TYPES = {
    "e2-medium",
    "n1-standard-1",
    "n1-standard-4",
    "n1-standard-8",
    "n2-standard-8",
    "a2-highgpu-1g",
    "g2-standard-4",
}
ACCELERATOR_TYPES = {
    "nvidia-tesla-t4",
    "nvidia-tesla-v100",
    "nvidia-tesla-p100",
    "nvidia-tesla-p4",
    "nvidia-tesla-k80",
    "nvidia-l4",
    "nvidia-tesla-a100",
    "nvidia-a100-80gb",
    "nvidia-h100-80gb",
}
DISK_TYPES = {"pd-standard", "pd-balanced", "pd-ssd"}
IMAGES = {"projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"}

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_METADATA_KEY = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_FILTER_TERM = re.compile(r'\(?\s*labels\.([a-z][a-z0-9_-]*)\s*=\s*"?([a-z0-9_-]*)"?\s*\)?')


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None


class APIError(Exception):
    """An error response in GCP's JSON shape."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict[str, Any]:
        status = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            409: "ALREADY_EXISTS",
            412: "FAILED_PRECONDITION",
        }.get(self.code, "UNKNOWN")
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
                "status": status,
            }
        }


def _invalid(field: str, value: Any, why: str) -> APIError:
    return APIError(400, "invalid", f"Invalid value for field '{field}': '{value}'. {why}")


def _not_found(resource: str) -> APIError:
    return APIError(404, "notFound", f"The resource '{resource}' was not found")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _fingerprint(value: Any) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


class FakeGCPCompute:
    """The fake API: `url` is what `GCPAPI(endpoint=...)` takes; `close()` stops it."""

    def __init__(self, project: str = "skyloom-test") -> None:
        self.project = project
        self.requests: list[Call] = []
        # When False, created and started instances stay STAGING until `boot(name)`.
        self.auto_boot = True
        # Results per aggregated-list page when the caller sets no maxResults.
        self.page_size = 500
        self.images = set(IMAGES)
        self._lock = threading.RLock()
        self._instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name)
        self._firewalls: dict[str, dict[str, Any]] = {}
        self._ops: dict[str, _Operation] = {}
        self._exhausted: set[str] = set()
        self._quota: dict[str, bool] = {}  # region -> refused at request (else in the op)
        self._denied = False
        self._ids = itertools.count(1000)
        self._ips = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # Test controls.

    def exhaust(self, zone: str) -> None:
        """Inserts and starts in the zone end with ZONE_RESOURCE_POOL_EXHAUSTED."""
        self._exhausted.add(zone)

    def quota(self, region: str, *, at_request: bool = False) -> None:
        """Inserts in the region fail on the CPUS quota: in the finished operation (as
        GCP usually reports it) or, with at_request, as a 403 to the insert itself."""
        self._quota[region] = at_request

    def deny(self) -> None:
        """Every request gets 401, as with a revoked credential."""
        self._denied = True

    def preempt(self, name: str) -> None:
        """Reclaim a spot instance as GCP does with instanceTerminationAction STOP."""
        with self._lock:
            inst = self._by_name(name)
            if inst.get("scheduling", {}).get("provisioningModel") != "SPOT":
                raise ValueError(f"{name} is not a spot instance")
            self._power_off(inst)

    def boot(self, name: str) -> None:
        with self._lock:
            self._by_name(name)["status"] = "RUNNING"

    @property
    def instances(self) -> dict[str, dict[str, Any]]:
        """Every instance by name, as GCP would return it."""
        with self._lock:
            return {name: copy.deepcopy(i) for (_, name), i in self._instances.items()}

    @property
    def firewalls(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._firewalls)

    def calls(self, method: str, pattern: str) -> list[Call]:
        """The requests whose method is method and whose path matches pattern."""
        return [c for c in self.requests if c.method == method and re.search(pattern, c.path)]

    # Request handling: each route returns (status, JSON body).

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        with self._lock:
            self.requests.append(Call(method, path, query, body))
            if self._denied:
                raise APIError(
                    401,
                    "required",
                    "Request is missing required authentication credential. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                )
            prefix = f"/compute/v1/projects/{self.project}"
            if not path.startswith(prefix + "/"):
                project = "/".join(path.removeprefix("/compute/v1/").split("/")[:2])
                raise _not_found(project)
            parts = path.removeprefix(prefix + "/").split("/")
            for pattern, verb, route in self._routes():
                if verb == method and len(pattern) == len(parts):
                    args = [p for pat, p in zip(pattern, parts, strict=True) if pat == "*"]
                    fixed = [(pat, p) for pat, p in zip(pattern, parts, strict=True) if pat != "*"]
                    if all(pat == p for pat, p in fixed):
                        return route(*args, query=query, body=body)
            raise APIError(404, "notFound", f"no route for {method} {path}")

    def _routes(self) -> list[tuple[list[str], str, Any]]:
        return [
            (["zones", "*", "instances"], "POST", self._insert),
            (["zones", "*", "instances", "*"], "GET", self._get_instance),
            (["zones", "*", "instances", "*"], "DELETE", self._delete),
            (["zones", "*", "instances", "*", "stop"], "POST", self._stop),
            (["zones", "*", "instances", "*", "start"], "POST", self._start),
            (["zones", "*", "instances", "*", "setLabels"], "POST", self._set_labels),
            (["aggregated", "instances"], "GET", self._aggregated),
            (["zones", "*", "operations", "*"], "GET", self._get_op),
            (["zones", "*", "operations", "*", "wait"], "POST", self._get_op),
            (["global", "operations", "*"], "GET", self._get_global_op),
            (["global", "operations", "*", "wait"], "POST", self._get_global_op),
            (["global", "firewalls"], "POST", self._insert_firewall),
            (["global", "firewalls"], "GET", self._list_firewalls),
            (["global", "firewalls", "*"], "GET", self._get_firewall),
            (["global", "firewalls", "*"], "DELETE", self._delete_firewall),
            (["regions"], "GET", self._list_regions),
            (["regions", "*"], "GET", self._get_region),
            (["zones"], "GET", self._list_zones),
            (["zones", "*"], "GET", self._get_zone),
        ]

    # Instances.

    def _insert(self, zone: str, *, query: dict[str, str], body: Any) -> Any:
        self._zone(zone)
        inst = self._validated_instance(zone, body or {})
        key = (zone, inst["name"])
        if key in self._instances:
            raise APIError(
                409,
                "alreadyExists",
                f"The resource 'projects/{self.project}/zones/{zone}/instances/{inst['name']}' "
                "already exists",
            )
        region = ZONES[zone]
        if self._quota.get(region) is True:
            raise APIError(403, "quotaExceeded", self._quota_message(region))
        if zone in self._exhausted or region in self._quota:
            error = self._capacity_error(zone) if zone in self._exhausted else None
            error = error or {
                "code": "QUOTA_EXCEEDED",
                "message": self._quota_message(region),
                "httpStatus": 403,
            }
            return self._op(zone, "insert", inst["name"], finish=None, error=error)
        self._instances[key] = inst
        return self._op(zone, "insert", inst["name"], finish=lambda: self._booted(inst))

    def _validated_instance(self, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        inst = copy.deepcopy(body)
        name = inst.get("name", "")
        if not _NAME.fullmatch(name):
            raise _invalid("resource.name", name, "Must be a match of regex '[a-z]...'")
        machine = _last(inst.get("machineType", ""))
        if f"zones/{zone}/machineTypes/{machine}" not in inst.get("machineType", ""):
            raise _invalid("resource.machineType", inst.get("machineType"), "Bad zone.")
        if machine not in MACHINE_TYPES:
            raise _invalid(
                "resource.machineType",
                inst["machineType"],
                f"Machine type with name '{machine}' does not exist in zone '{zone}'.",
            )
        labels = inst.get("labels", {})
        for k, v in labels.items():
            if not _LABEL_KEY.fullmatch(k) or not _LABEL_VALUE.fullmatch(v):
                raise _invalid("resource.labels", f"{k}={v}", "Label keys and values ...")
        for item in inst.get("metadata", {}).get("items", []):
            if not _METADATA_KEY.fullmatch(item.get("key", "")):
                raise _invalid("resource.metadata", item.get("key"), "Bad metadata key.")
        scheduling = inst.setdefault("scheduling", {})
        gpus = inst.get("guestAccelerators", [])
        for gpu in gpus:
            if _last(gpu.get("acceleratorType", "")) not in ACCELERATOR_TYPES:
                raise _not_found(gpu.get("acceleratorType", ""))
        terminate = scheduling.get("onHostMaintenance") == "TERMINATE"
        if gpus and not terminate:
            raise APIError(
                400,
                "badRequest",
                "Instances with guest accelerators do not support live migration.",
            )
        if scheduling.get("provisioningModel") == "SPOT" and (
            not terminate or scheduling.get("automaticRestart", True)
        ):
            raise _invalid(
                "resource.scheduling",
                "SPOT",
                "Spot instances need onHostMaintenance TERMINATE and automaticRestart false.",
            )
        disks = inst.get("disks", [])
        if len([d for d in disks if d.get("boot")]) != 1:
            raise _invalid("resource.disks", len(disks), "Exactly one boot disk is required.")
        for i, disk in enumerate(disks):
            params = disk.get("initializeParams", {})
            image = params.get("sourceImage", "")
            if image.removeprefix(BASE + "/") not in self.images:
                raise _not_found(image)
            if _last(params.get("diskType", "pd-standard")) not in DISK_TYPES:
                raise _not_found(params["diskType"])
            disk.update(
                source=f"{BASE}/projects/{self.project}/zones/{zone}/disks/{name}",
                deviceName="persistent-disk-0" if i == 0 else f"persistent-disk-{i}",
                index=i,
                kind="compute#attachedDisk",
            )
            disk.setdefault("autoDelete", False)
        nics = inst.get("networkInterfaces", [])
        if not nics:
            raise _invalid("resource.networkInterfaces", "[]", "A network interface is needed.")
        for i, nic in enumerate(nics):
            network = nic.get("network", "global/networks/default")
            if _last(network) != "default":
                raise _not_found(network)
            n = next(self._ips)
            nic.update(
                name=f"nic{i}",
                network=f"{BASE}/projects/{self.project}/global/networks/default",
                networkIP=f"127.10.{n // 250}.{n % 250 + 1}",
                kind="compute#networkInterface",
            )
        inst.update(
            id=str(next(self._ids)),
            kind="compute#instance",
            zone=f"{BASE}/projects/{self.project}/zones/{zone}",
            machineType=f"{BASE}/projects/{self.project}/zones/{zone}/machineTypes/{machine}",
            selfLink=f"{BASE}/projects/{self.project}/zones/{zone}/instances/{name}",
            status="PROVISIONING",
            creationTimestamp=_now(),
            labelFingerprint=_fingerprint(labels),
        )
        metadata = inst.setdefault("metadata", {})
        metadata.update(fingerprint=_fingerprint(metadata), kind="compute#metadata")
        if "tags" in inst:
            inst["tags"]["fingerprint"] = _fingerprint(inst["tags"].get("items", []))
        self._give_public_ips(inst)
        return inst

    def _give_public_ips(self, inst: dict[str, Any]) -> None:
        """Ephemeral external addresses: a stopped instance loses them, as on GCP."""
        for nic in inst["networkInterfaces"]:
            for ac in nic.get("accessConfigs", []):
                n = next(self._ips)
                ac.update(
                    natIP=f"127.20.{n // 250}.{n % 250 + 1}",
                    name=ac.get("name", "External NAT"),
                    type=ac.get("type", "ONE_TO_ONE_NAT"),
                    networkTier=ac.get("networkTier", "PREMIUM"),
                    kind="compute#accessConfig",
                )

    def _power_off(self, inst: dict[str, Any]) -> None:
        inst["status"] = "TERMINATED"
        inst["lastStopTimestamp"] = _now()
        for nic in inst["networkInterfaces"]:
            for ac in nic.get("accessConfigs", []):
                ac.pop("natIP", None)

    def _booted(self, inst: dict[str, Any]) -> None:
        inst["status"] = "RUNNING" if self.auto_boot else "STAGING"

    def _capacity_error(self, zone: str) -> dict[str, Any]:
        return {
            "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
            "message": f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
            "resources available to fulfill the request.  Try a different zone, or try "
            "again later.",
            "httpStatus": 503,
        }

    def _quota_message(self, region: str) -> str:
        return f"Quota 'CPUS' exceeded.  Limit: 8.0 in region {region}."

    def _instance(self, zone: str, name: str) -> dict[str, Any]:
        self._zone(zone)
        inst = self._instances.get((zone, name))
        if inst is None:
            raise _not_found(f"projects/{self.project}/zones/{zone}/instances/{name}")
        return inst

    def _by_name(self, name: str) -> dict[str, Any]:
        found = [i for (_, n), i in self._instances.items() if n == name]
        if not found:
            raise KeyError(name)
        return found[0]

    def _get_instance(self, zone: str, name: str, **_: Any) -> Any:
        return copy.deepcopy(self._instance(zone, name))

    def _delete(self, zone: str, name: str, **_: Any) -> Any:
        inst = self._instance(zone, name)
        inst["status"] = "STOPPING"
        return self._op(zone, "delete", name, finish=lambda: self._instances.pop((zone, name)))

    def _stop(self, zone: str, name: str, **_: Any) -> Any:
        inst = self._instance(zone, name)
        if inst["status"] != "TERMINATED":
            inst["status"] = "STOPPING"
        return self._op(zone, "stop", name, finish=lambda: self._power_off(inst))

    def _start(self, zone: str, name: str, **_: Any) -> Any:
        inst = self._instance(zone, name)
        if inst["status"] == "RUNNING":
            return self._op(zone, "start", name, finish=None)
        if zone in self._exhausted:
            return self._op(zone, "start", name, finish=None, error=self._capacity_error(zone))

        def started() -> None:
            self._give_public_ips(inst)
            self._booted(inst)

        inst["status"] = "STAGING"
        return self._op(zone, "start", name, finish=started)

    def _set_labels(self, zone: str, name: str, *, body: Any, **_: Any) -> Any:
        inst = self._instance(zone, name)
        body = body or {}
        if body.get("labelFingerprint") != inst["labelFingerprint"]:
            raise APIError(
                412,
                "conditionNotMet",
                "Labels fingerprint either invalid or resource labels have changed",
            )
        labels = body.get("labels", {})
        for k, v in labels.items():
            if not _LABEL_KEY.fullmatch(k) or not _LABEL_VALUE.fullmatch(v):
                raise _invalid("labels", f"{k}={v}", "Label keys and values ...")
        inst["labels"] = dict(labels)
        inst["labelFingerprint"] = _fingerprint(labels)
        return self._op(zone, "setLabels", name, finish=None)

    def _aggregated(self, *, query: dict[str, str], **_: Any) -> Any:
        wanted = _parse_filter(query.get("filter", ""))
        matching = sorted(
            (zone, name)
            for (zone, name), inst in self._instances.items()
            if all(inst.get("labels", {}).get(k) == v for k, v in wanted)
        )
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or self.page_size)
        page = matching[start : start + size]
        items: dict[str, Any] = {}
        for zone in ZONES:
            found = [copy.deepcopy(self._instances[k]) for k in page if k[0] == zone]
            items[f"zones/{zone}"] = (
                {"instances": found}
                if found
                else {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope 'zones/{zone}' on this page.",
                        "data": [{"key": "scope", "value": f"zones/{zone}"}],
                    }
                }
            )
        result: dict[str, Any] = {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{self.project}/aggregated/instances",
            "items": items,
            "selfLink": f"{BASE}/projects/{self.project}/aggregated/instances",
        }
        if start + size < len(matching):
            result["nextPageToken"] = str(start + size)
        return result

    # Operations: RUNNING when returned, DONE (and applied) on the next get or wait.

    def _op(
        self,
        zone: str | None,
        kind: str,
        target: str,
        *,
        finish: Any,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        n = next(self._ids)
        name = f"operation-{n}-{hashlib.sha256(str(n).encode()).hexdigest()[:12]}"
        scope = f"zones/{zone}" if zone else "global"
        collection = "instances" if zone else "firewalls"
        body = {
            "kind": "compute#operation",
            "id": str(n),
            "name": name,
            "operationType": kind,
            "targetLink": f"{BASE}/projects/{self.project}/{scope}/{collection}/{target}",
            "status": "RUNNING",
            "user": "fake@skyloom-test.iam.gserviceaccount.com",
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{BASE}/projects/{self.project}/{scope}/operations/{name}",
        }
        if zone:
            body["zone"] = f"{BASE}/projects/{self.project}/zones/{zone}"
        self._ops[name] = _Operation(body, scope, finish, error)
        return copy.deepcopy(body)

    def _get_op(self, zone: str, name: str, **_: Any) -> Any:
        return self._advance(f"zones/{zone}", name)

    def _get_global_op(self, name: str, **_: Any) -> Any:
        return self._advance("global", name)

    def _advance(self, scope: str, name: str) -> Any:
        op = self._ops.get(name)
        if op is None or op.scope != scope:
            raise _not_found(f"projects/{self.project}/{scope}/operations/{name}")
        if op.body["status"] != "DONE":
            op.body.update(status="DONE", progress=100, endTime=_now())
            if op.error is not None:
                status = op.error.pop("httpStatus")
                op.body["error"] = {"errors": [op.error]}
                op.body["httpErrorStatusCode"] = status
                op.body["httpErrorMessage"] = {403: "FORBIDDEN"}.get(status, "SERVICE UNAVAILABLE")
            elif op.finish is not None:
                op.finish()
        return copy.deepcopy(op.body)

    # Firewalls.

    def _insert_firewall(self, *, body: Any, **_: Any) -> Any:
        fw = copy.deepcopy(body or {})
        name = fw.get("name", "")
        if not _NAME.fullmatch(name):
            raise _invalid("resource.name", name, "Must be a match of regex '[a-z]...'")
        if name in self._firewalls:
            raise APIError(
                409,
                "alreadyExists",
                f"The resource 'projects/{self.project}/global/firewalls/{name}' already exists",
            )
        if _last(fw.get("network", "")) != "default":
            raise _not_found(fw.get("network", ""))
        for rule in fw.get("allowed", []):
            for ports in rule.get("ports", []):
                if not re.fullmatch(r"\d+(-\d+)?", ports):
                    raise _invalid("resource.allowed[0].ports", ports, "Bad port range.")
        fw.update(
            id=str(next(self._ids)),
            kind="compute#firewall",
            network=f"{BASE}/projects/{self.project}/global/networks/default",
            selfLink=f"{BASE}/projects/{self.project}/global/firewalls/{name}",
            creationTimestamp=_now(),
        )
        fw.setdefault("direction", "INGRESS")
        fw.setdefault("priority", 1000)
        self._firewalls[name] = fw
        return self._op(None, "insert", name, finish=None)

    def _firewall(self, name: str) -> dict[str, Any]:
        if name not in self._firewalls:
            raise _not_found(f"projects/{self.project}/global/firewalls/{name}")
        return self._firewalls[name]

    def _get_firewall(self, name: str, **_: Any) -> Any:
        return copy.deepcopy(self._firewall(name))

    def _delete_firewall(self, name: str, **_: Any) -> Any:
        self._firewall(name)
        return self._op(None, "delete", name, finish=lambda: self._firewalls.pop(name))

    def _list_firewalls(self, **_: Any) -> Any:
        return {
            "kind": "compute#firewallList",
            "items": [copy.deepcopy(fw) for fw in self._firewalls.values()],
        }

    # Regions and zones.

    def _zone(self, zone: str) -> str:
        if zone not in ZONES:
            raise _not_found(f"projects/{self.project}/zones/{zone}")
        return ZONES[zone]

    def _zone_body(self, zone: str) -> dict[str, Any]:
        return {
            "kind": "compute#zone",
            "name": zone,
            "status": "UP",
            "region": f"{BASE}/projects/{self.project}/regions/{ZONES[zone]}",
            "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}",
        }

    def _region_body(self, region: str) -> dict[str, Any]:
        return {
            "kind": "compute#region",
            "name": region,
            "status": "UP",
            "zones": [f"{BASE}/projects/{self.project}/zones/{z}" for z in REGIONS[region]],
            "selfLink": f"{BASE}/projects/{self.project}/regions/{region}",
        }

    def _get_zone(self, zone: str, **_: Any) -> Any:
        self._zone(zone)
        return self._zone_body(zone)

    def _list_zones(self, *, query: dict[str, str], **_: Any) -> Any:
        zones = list(ZONES)[: int(query.get("maxResults") or len(ZONES))]
        return {"kind": "compute#zoneList", "items": [self._zone_body(z) for z in zones]}

    def _get_region(self, region: str, **_: Any) -> Any:
        if region not in REGIONS:
            raise _not_found(f"projects/{self.project}/regions/{region}")
        return self._region_body(region)

    def _list_regions(self, **_: Any) -> Any:
        return {"kind": "compute#regionList", "items": [self._region_body(r) for r in REGIONS]}


@dataclass
class _Operation:
    body: dict[str, Any]
    scope: str  # "zones/<zone>" or "global"
    finish: Any  # applied when the operation turns DONE without error
    error: dict[str, Any] | None


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """GCP's list filter, as far as skyloom uses it: `labels.k = "v"` terms joined by
    AND (in parentheses or not)."""
    if not text.strip():
        return []
    terms = re.split(r"\s+AND\s+", text.strip())
    parsed = [_FILTER_TERM.fullmatch(t.strip()) for t in terms]
    if not all(parsed):
        raise _invalid("filter", text, "Unsupported filter expression.")
    return [(m.group(1), m.group(2)) for m in parsed if m]


def _handler(fake: FakeGCPCompute) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this each answer waits for
        # the client's delayed ACK.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items() if not k.startswith("$")}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw.strip() else None
            try:
                status, result = 200, fake.handle(self.command, url.path, query, body)
            except APIError as err:
                status, result = err.code, err.body()
            except Exception as err:  # a bug in the fake: answer, so the test shows it
                status, result = 500, APIError(500, "backendError", repr(err)).body()
            data = json.dumps(result).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the `requests` log is what tests read

    return Handler
