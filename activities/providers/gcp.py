"""GCP instance calls with google-cloud-compute (the CloudAPI seam of cloud_api.py).

GCP labels cannot hold skyloom's marks (lowercase only, no dots), so the marks live in
instance metadata, exactly as given, and labels carry only what the server filters on:
`skyloom=1` and a digest of the owner. Operations are waited on with our own operation
clients: the SDK's `ExtendedOperation.result()` polls through a client built without
our endpoint, and a capacity failure only shows in the finished operation.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

from skyloom.activities.errors import ErrorKind, Where, provider_error
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

INSTALL_HINT = "pip install 'skyloom[gcp]'"
DEFAULT_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
# Every instance skyloom creates carries this label: one server-side filter finds them.
MARK_LABEL = "skyloom"
# Set on a spot instance skyloom stops (any other stop of a spot instance is GCP
# reclaiming it), cleared when skyloom starts it again.
STOPPED_LABEL = "skyloom-stopped"

# SkyPilot's accelerator names → GCP's accelerator types.
ACCELERATORS = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
    "K80": "nvidia-tesla-k80",
    "L4": "nvidia-l4",
    "A100": "nvidia-tesla-a100",
    "A100-80GB": "nvidia-a100-80gb",
    "H100": "nvidia-h100-80gb",
}
# SkyPilot's disk tiers → persistent disk types.
DISK_TYPES = {
    None: "pd-balanced",
    "low": "pd-standard",
    "medium": "pd-balanced",
    "high": "pd-ssd",
    "ultra": "pd-ssd",
    "best": "pd-ssd",
}
_STATES = {
    "PROVISIONING": NodeState.PENDING,
    "STAGING": NodeState.PENDING,
    "REPAIRING": NodeState.PENDING,
    "RUNNING": NodeState.UP,
    "STOPPING": NodeState.STOPPED,
    "SUSPENDING": NodeState.STOPPED,
    "SUSPENDED": NodeState.STOPPED,
    "TERMINATED": NodeState.STOPPED,
}
_CAPACITY = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"}
# Rate limits come back as 403 too; they pass with time, so they are not QUOTA.
_RATE_LIMITS = {"rateLimitExceeded", "userRateLimitExceeded", "RESOURCE_OPERATION_RATE_EXCEEDED"}
# Which input a 400/404 on insert is about. GCP names the culprit only in the message,
# so the text is read here, once, at the edge, and the workflow gets a field.
_FIELDS = (
    ("image", "resources.image_id"),
    ("machinetype", "resources.instance_type"),
    ("machine type", "resources.instance_type"),
    ("accelerator", "resources.accelerators"),
    ("disktype", "resources.disk_tier"),
    ("labels", "resources.labels"),
    ("ports", "resources.ports"),
    ("/zones/", "resources.zone"),
)
# Longest time create/stop/start/delete wait for GCP to finish an operation. Inserts
# finish once the VM is placed (well before it boots), usually in under a minute.
OPERATION_TIMEOUT = 300.0
_NAME_MAX = 63


def owner_label(owner: str) -> str:
    """The owner as a label value and network tag: owners hold uppercase and dots."""
    return digest(owner, 20)


def instance_name(cluster: str, owner: str, rank: int) -> str:
    """A valid GCP instance name, unique per (owner, rank), still readable in the
    console: the cluster's name as far as GCP allows, then a digest of the owner."""
    suffix = f"-{digest(owner, 10)}-{rank}"
    base = re.sub(r"[^a-z0-9-]+", "-", cluster.lower())
    base = re.sub(r"-+", "-", base).strip("-")
    if not base or not base[0].isalpha():
        base = f"sky-{base}".rstrip("-")
    return base[: _NAME_MAX - len(suffix)].rstrip("-") + suffix


def label_safe(labels: dict[str, str]) -> dict[str, str]:
    """The user's labels under GCP's rules (keys: a lowercase letter then [a-z0-9_-],
    values [a-z0-9_-], both at most 63); characters outside become `_`."""
    out = {}
    for key, value in labels.items():
        k = re.sub(r"[^a-z0-9_-]", "_", str(key).lower())
        if not k[:1].isalpha():
            k = f"x{k}"
        out[k[:63]] = re.sub(r"[^a-z0-9_-]", "_", str(value).lower())[:63]
    return out


def _port_range(text: str) -> bool:
    """Whether text is a port (8080) or an ascending range (10000-10010)."""
    bounds = text.split("-")
    if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
        return False
    numbers = [int(b) for b in bounds]
    return all(0 < n < 65536 for n in numbers) and numbers == sorted(numbers)


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _classify(
    status: int | None, reasons: set[str], text: str, where: Where, *, spec: bool
) -> ApplicationError | None:
    """A GCP failure (an HTTP error or a finished operation's errors) as the workflow
    must see it; None for what a retry may fix."""
    lowered = text.lower()
    if reasons & _CAPACITY or "does not have enough resources" in lowered:
        return provider_error(ErrorKind.NO_CAPACITY, text, where=where)
    if reasons & _RATE_LIMITS:
        return None
    if any("quota" in r.lower() for r in reasons) or (status == 403 and "quota" in lowered):
        return provider_error(ErrorKind.QUOTA, text, where=where)
    if status in (401, 403):
        return provider_error(ErrorKind.CREDENTIALS, text, where=where)
    if spec and status in (400, 404):
        field = next((f for key, f in _FIELDS if key in lowered), None)
        return provider_error(ErrorKind.INVALID_SPEC, text, where=replace(where, field=field))
    return None


class OperationFailed(RuntimeError):
    """A GCP operation that finished with an error skyloom cannot classify (retried)."""


class GCPAPI(CloudAPI):
    cloud = "gcp"

    def __init__(
        self,
        project_id: str,
        regions: list[str],
        *,
        credentials: Any = None,
        endpoint: str | None = None,
    ) -> None:
        self.project = project_id
        self._regions = list(regions)
        self._credentials = credentials
        self._endpoint = endpoint
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def catalog_source(self) -> Any:
        from skyloom.activities.catalog import refresh

        return refresh.gcp_source(self.project, credentials=self._credentials)

    # -- plumbing

    def _client(self, name: str) -> Any:
        """The SDK client class `name` of compute_v1, built once with our options."""
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                from google.cloud import compute_v1

                kwargs: dict[str, Any] = {"credentials": self._credentials}
                if self._endpoint is not None:
                    from google.api_core.client_options import ClientOptions
                    from google.auth.credentials import AnonymousCredentials

                    kwargs["client_options"] = ClientOptions(api_endpoint=self._endpoint)
                    kwargs["credentials"] = self._credentials or AnonymousCredentials()
                client = getattr(compute_v1, name)(**kwargs)
                self._clients[name] = client
            return client

    @contextmanager
    def _errors(self, where: Where, *, spec: bool = False) -> Iterator[None]:
        """Raise SDK failures as provider errors (spec: 400/404 are about the input)."""
        try:
            yield
        except ApplicationError:
            raise
        except ImportError as e:
            raise provider_error(
                ErrorKind.NOT_SUPPORTED, f"google-cloud-compute is missing: {INSTALL_HINT}"
            ) from e
        except Exception as e:
            mapped = self._mapped(e, where, spec=spec)
            if mapped is None:
                raise
            raise mapped from e

    def _mapped(self, e: Exception, where: Where, *, spec: bool) -> ApplicationError | None:
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions

        if isinstance(e, auth_exceptions.DefaultCredentialsError | auth_exceptions.RefreshError):
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            return provider_error(ErrorKind.CREDENTIALS, f"GCP credentials: {why}", where=where)
        if not isinstance(e, api_exceptions.GoogleAPICallError):
            return None
        details = [d for d in e.errors if isinstance(d, dict)]
        reasons = {str(d.get("reason")) for d in details if d.get("reason")}
        if e.reason:
            reasons.add(e.reason)
        text = "; ".join(str(d["message"]) for d in details if d.get("message"))
        return _classify(e.code, reasons, text or e.message, where, spec=spec)

    def _wait(self, op: Any, zone: str | None, where: Where, *, spec: bool = False) -> None:
        """Wait for a zonal (zone) or global (None) operation to finish, and raise what
        it failed with. Outside create (spec) a 404 is success: the thing is gone."""
        from google.cloud import compute_v1

        done = compute_v1.Operation.Status.DONE
        deadline = time.monotonic() + OPERATION_TIMEOUT
        while op.status != done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"gcp: operation {op.name} not done in {OPERATION_TIMEOUT}s")
            # `wait` returns at DONE or after about two minutes, whichever is first.
            if zone is None:
                op = self._client("GlobalOperationsClient").wait(
                    project=self.project, operation=op.name, timeout=left
                )
            else:
                op = self._client("ZoneOperationsClient").wait(
                    project=self.project, zone=zone, operation=op.name, timeout=left
                )
        errors = list(op.error.errors)
        if not errors or (op.http_error_status_code == 404 and not spec):
            return
        codes = {e.code for e in errors}
        text = "; ".join(f"{e.code}: {e.message}" for e in errors)
        mapped = _classify(op.http_error_status_code or None, codes, text, where, spec=spec)
        if mapped is not None:
            raise mapped
        raise OperationFailed(f"gcp {op.operation_type} of {_last(op.target_link)}: {text}")

    def _owned(self, region: str, owner: str | None) -> list[tuple[str, Any]]:
        """(zone, SDK instance) of skyloom's instances in the region (or the owner's):
        one aggregated listing, filtered by label on the server."""
        labels = {MARK_LABEL: "1"}
        if owner is not None:
            labels[OWNER_TAG] = owner_label(owner)
        query = " AND ".join(f'(labels.{k} = "{v}")' for k, v in labels.items())
        # No returnPartialSuccess: a listing missing an unreachable zone would report
        # that zone's nodes as gone; failing whole lets the activity retry instead.
        pages = self._client("InstancesClient").aggregated_list(
            request={"project": self.project, "filter": query}
        )
        found = []
        for scope, scoped in pages:
            zone = scope.removeprefix("zones/")
            if not scope.startswith("zones/") or _region_of(zone) != region:
                continue
            for inst in scoped.instances:
                marks = {item.key: item.value for item in inst.metadata.items}
                # The label is a digest: the exact owner is in the metadata.
                if owner is None or marks.get(OWNER_TAG) == owner:
                    found.append((zone, inst))
        return found

    def _instance(self, region: str, zone: str, inst: Any) -> Instance | None:
        marks = {item.key: item.value for item in inst.metadata.items}
        try:
            owner, rank = marks[OWNER_TAG], int(marks[RANK_TAG])
        except (KeyError, ValueError):
            return None  # labelled by hand, not made by skyloom
        scheduling = inst.scheduling
        spot = scheduling.provisioning_model == "SPOT" or bool(scheduling.preemptible)
        state = _STATES.get(inst.status, NodeState.PENDING)
        if (
            spot
            and inst.status in ("STOPPING", "TERMINATED")
            and inst.labels.get(STOPPED_LABEL) != "1"
        ):
            state = NodeState.PREEMPTED
        nics = list(inst.network_interfaces)
        configs = list(nics[0].access_configs) if nics else []
        return Instance(
            id=inst.name,
            region=region,
            zone=zone,
            state=state,
            cluster=marks.get(CLUSTER_TAG, ""),
            owner=owner,
            rank=rank,
            workflow_id=marks.get(WORKFLOW_TAG),
            instance_type=_last(inst.machine_type) if inst.machine_type else None,
            spot=spot,
            public_ip=(configs[0].nat_i_p or None) if configs else None,
            private_ip=(nics[0].network_i_p or None) if nics else None,
        )

    # -- the seam

    def check(self) -> CheckResult:
        try:
            import google.cloud.compute_v1  # noqa: F401
        except ImportError:
            return CheckResult(infra="gcp", enabled=False, reason=INSTALL_HINT)
        try:
            with self._errors(Where(infra="gcp")):
                self._client("ZonesClient").list(
                    request={"project": self.project, "max_results": 1}
                )
        except Exception as e:
            why = e.message if isinstance(e, ApplicationError) else f"{type(e).__name__}: {e}"
            return CheckResult(infra="gcp", enabled=False, reason=why.splitlines()[0][:200])
        return CheckResult(infra="gcp", enabled=True, reason=f"credentials work ({self.project})")

    def regions(self) -> list[str]:
        return list(self._regions)

    def list_instances(self, region: str, owner: str | None = None) -> list[Instance]:
        with self._errors(Where(infra="gcp", region=region)):
            owned = self._owned(region, owner)
        nodes = [self._instance(region, zone, inst) for zone, inst in owned]
        return sorted((n for n in nodes if n), key=lambda n: (n.owner, n.rank))

    def create_instances(self, req: InstanceRequest) -> list[Instance]:
        where = Where(
            infra="gcp", region=req.region, zone=req.zone, instance_type=req.instance_type
        )
        zone = req.zone
        if not zone or _region_of(zone) != req.region:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"GCP places an instance in a zone of its region; got zone {zone!r} "
                f"for region {req.region!r}",
                where=replace(where, field="resources.zone"),
            )
        bodies = {rank: self._body(req, zone, rank, where) for rank in req.ranks}
        with self._errors(where, spec=True):
            from google.api_core.exceptions import Conflict

            if req.ports:
                self._open_ports(req.owner, req.ports, where)
            client = self._client("InstancesClient")
            ops = []
            for body in bodies.values():
                # A 409 means an earlier, cut-off call made it: the name is (owner, rank).
                with suppress(Conflict):
                    ops.append(
                        client.insert_unary(project=self.project, zone=zone, instance_resource=body)
                    )
            for op in ops:
                self._wait(op, zone, where, spec=True)
        return [
            Instance(
                id=body["name"],
                region=req.region,
                zone=zone,
                state=NodeState.PENDING,
                cluster=req.cluster,
                owner=req.owner,
                rank=rank,
                workflow_id=req.workflow_id,
                instance_type=req.instance_type,
                spot=req.spot,
            )
            for rank, body in bodies.items()
        ]

    def _body(self, req: InstanceRequest, zone: str, rank: int, where: Where) -> dict[str, Any]:
        """The instance resource for one rank (field names as the SDK's messages)."""
        if req.disk_tier not in DISK_TYPES:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"disk tier {req.disk_tier!r}: one of low, medium, high, ultra, best",
                where=replace(where, field="resources.disk_tier"),
            )
        gpus = []
        for name, count in req.accelerators.items():
            kind = ACCELERATORS.get(name) or ACCELERATORS.get(name.upper())
            if kind is None:
                raise provider_error(
                    ErrorKind.INVALID_SPEC,
                    f"accelerator {name!r} cannot be attached on GCP; attachable: "
                    + ", ".join(ACCELERATORS),
                    where=replace(where, field="resources.accelerators"),
                )
            gpus.append(
                {
                    "accelerator_type": f"zones/{zone}/acceleratorTypes/{kind}",
                    "accelerator_count": count,
                }
            )
        marks = {
            OWNER_TAG: req.owner,
            CLUSTER_TAG: req.cluster,
            RANK_TAG: str(rank),
            "ssh-keys": f"{req.ssh_user}:{req.ssh_public_key}",
        }
        if req.workflow_id:
            marks[WORKFLOW_TAG] = req.workflow_id
        scheduling: dict[str, Any] = {}
        if gpus or req.spot:
            # GPU hosts cannot live-migrate, and spot VMs are never restarted by GCP.
            scheduling["on_host_maintenance"] = "TERMINATE"
        if req.spot:
            scheduling.update(
                provisioning_model="SPOT",
                instance_termination_action="STOP",
                automatic_restart=False,
            )
        # The user's labels cannot pose as skyloom's (a `skyloom-stopped` would hide a
        # preemption).
        labels = {k: v for k, v in label_safe(req.labels).items() if not k.startswith(MARK_LABEL)}
        labels |= {MARK_LABEL: "1", OWNER_TAG: owner_label(req.owner)}
        return {
            "name": instance_name(req.cluster, req.owner, rank),
            "machine_type": f"zones/{zone}/machineTypes/{req.instance_type}",
            "labels": labels,
            "metadata": {"items": [{"key": k, "value": v} for k, v in marks.items()]},
            "tags": {"items": [self._network_tag(req.owner)]},
            "guest_accelerators": gpus,
            "scheduling": scheduling,
            "disks": [
                {
                    "boot": True,
                    # The boot disk goes with the instance: delete leaves nothing behind.
                    "auto_delete": True,
                    "initialize_params": {
                        "source_image": req.image_id or DEFAULT_IMAGE,
                        "disk_size_gb": req.disk_size_gb,
                        "disk_type": f"zones/{zone}/diskTypes/{DISK_TYPES[req.disk_tier]}",
                    },
                }
            ],
            "network_interfaces": [
                {
                    "network": "global/networks/default",
                    "access_configs": [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}],
                }
            ],
        }

    def _network_tag(self, owner: str) -> str:
        return f"skyloom-{owner_label(owner)}"

    def _open_ports(self, owner: str, ports: list[str], where: Where) -> None:
        """One firewall rule per owner on the default network, made once."""
        from google.api_core.exceptions import Conflict, NotFound

        bad = [p for p in ports if not _port_range(p.strip())]
        if bad:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"ports {bad}: a port (8080) or a range (10000-10010)",
                where=replace(where, field="resources.ports"),
            )
        client = self._client("FirewallsClient")
        name = self._network_tag(owner)
        try:
            client.get(project=self.project, firewall=name)
            return
        except NotFound:
            pass
        rule = {
            "name": name,
            "description": f"skyloom: ports of {owner}",
            "network": "global/networks/default",
            "direction": "INGRESS",
            "target_tags": [name],
            "source_ranges": ["0.0.0.0/0"],
            "allowed": [{"I_p_protocol": "tcp", "ports": [p.strip() for p in ports]}],
        }
        try:
            op = client.insert_unary(project=self.project, firewall_resource=rule)
        except Conflict:
            return
        self._wait(op, None, where)

    def delete_instances(self, region: str, owner: str) -> None:
        from google.api_core.exceptions import NotFound

        where = Where(infra="gcp", region=region)
        with self._errors(where):
            client = self._client("InstancesClient")
            ops = []
            for zone, inst in self._owned(region, owner):
                try:
                    op = client.delete_unary(project=self.project, zone=zone, instance=inst.name)
                except NotFound:
                    continue
                ops.append((zone, op))
            for zone, op in ops:
                self._wait(op, zone, where)
            try:
                firewalls = self._client("FirewallsClient")
                op = firewalls.delete_unary(project=self.project, firewall=self._network_tag(owner))
            except NotFound:
                return
            self._wait(op, None, where)

    def stop_instances(self, region: str, owner: str) -> None:
        where = Where(infra="gcp", region=region)
        with self._errors(where):
            owned = self._owned(region, owner)
            # Mark before stopping: a spot VM reclaimed in between is reported stopped,
            # which is what was asked anyway.
            self._set_stopped(owned, True, where)
            client = self._client("InstancesClient")
            ops = [
                (zone, client.stop_unary(project=self.project, zone=zone, instance=inst.name))
                for zone, inst in owned
                if inst.status != "TERMINATED"
            ]
            for zone, op in ops:
                self._wait(op, zone, where)

    def start_instances(self, region: str, owner: str) -> None:
        where = Where(infra="gcp", region=region)
        with self._errors(where):
            owned = self._owned(region, owner)
            client = self._client("InstancesClient")
            ops = [
                (
                    zone,
                    inst,
                    client.start_unary(project=self.project, zone=zone, instance=inst.name),
                )
                for zone, inst in owned
                if inst.status != "RUNNING"
            ]
            for zone, inst, op in ops:
                self._wait(op, zone, _with_place(where, zone, inst))
            # Unmark only once started: a spot VM reclaimed from now on is preempted.
            self._set_stopped(owned, False, where)

    def _set_stopped(self, owned: list[tuple[str, Any]], stopped: bool, where: Where) -> None:
        client = self._client("InstancesClient")
        ops = []
        for zone, inst in owned:
            if (inst.labels.get(STOPPED_LABEL) == "1") == stopped:
                continue
            labels = dict(inst.labels)
            if stopped:
                labels[STOPPED_LABEL] = "1"
            else:
                labels.pop(STOPPED_LABEL, None)
            request = {"labels": labels, "label_fingerprint": inst.label_fingerprint}
            op = client.set_labels_unary(
                project=self.project,
                zone=zone,
                instance=inst.name,
                instances_set_labels_request_resource=request,
            )
            ops.append((zone, op))
        for zone, op in ops:
            self._wait(op, zone, where)


def _with_place(where: Where, zone: str, inst: Any) -> Where:
    return Where(
        **{**where.__dict__, "zone": zone, "instance_type": _last(inst.machine_type) or None}
    )
