"""A cloud as a provider: what AWS, GCP and Azure share, over one CloudAPI each.

Offers come from the catalog (priced, one per zone, cheapest first); nodes are found by
their owner mark, never remembered; commands and file syncs go over SSH with the same
runner the SSH pools use, with a key pair the worker makes once. The watcher's sweep of
a cloud is one listing per region that holds skyloom instances (preempted spot nodes),
plus the long-lived watch channel of every running node (ended phases).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from skyloom.activities import catalog as cat
from skyloom.activities.errors import ErrorKind, Where, provider_error
from skyloom.activities.models import (
    Capability,
    CheckResult,
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    NodeState,
    Observation,
    Offer,
    ProvisionInput,
    WatchedObservation,
)
from skyloom.activities.providers.base import Provider, safe_name
from skyloom.activities.providers.cloud_api import CloudAPI, Instance, InstanceRequest
from skyloom.activities.providers.ssh import NODE_DIR, Connections, SSHRunner
from skyloom.activities.runners import Runner
from skyloom.spec.node_pools import SSHHost
from temporalio import activity

log = logging.getLogger("skyloom.cloud")

DEFAULT_DISK_GB = 256
# Regions holding no skyloom instance are looked at again this often (a node made by
# another worker, a region first used elsewhere); the others every sweep.
FULL_SCAN_SECONDS = 300.0
_BOOT_WAIT = 600.0


def ensure_key(path: Path) -> str:
    """The worker's SSH key for cloud nodes (made once, ed25519); its public line."""
    pub = path.with_suffix(".pub")
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        tmp.chmod(0o600)
        line = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        pub.write_text(line.decode() + " skyloom\n")
        tmp.replace(path)
    return pub.read_text().strip()


def _port_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=timeout):
        return True
    return False


class CloudProvider(Provider):
    capabilities = frozenset(
        {Capability.STOP, Capability.OPEN_PORTS, Capability.SPOT, Capability.MULTI_NODE,
         Capability.WATCH}
    )  # fmt: skip
    watch_interval = 1.0
    priced = True

    def __init__(
        self,
        api: CloudAPI,
        home: Path,
        *,
        ssh_user: str,
        ssh_port: int = 22,
        use_internal_ips: bool = False,
        catalog: cat.CatalogStore | cat.Catalog | None = None,
        unreachable_grace: float = 60.0,
    ) -> None:
        self.api = api
        self.name = api.cloud
        self.home = home
        self.ssh_user = ssh_user
        self.ssh_port = ssh_port
        self.use_internal_ips = use_internal_ips
        if isinstance(catalog, cat.Catalog):
            catalog = cat.CatalogStore(fixed=catalog)
        self._catalog = catalog or cat.CatalogStore(home / "catalog")
        self.key_file = home / "ssh" / "skyloom-cloud-key"
        self.conns = Connections(home / "ssh" / "cloud_known_hosts", strict=False)
        self.unreachable_grace = unreachable_grace
        self._watches: Any = None
        self._lock = threading.Lock()
        self._active: set[str] = set()  # regions known to hold skyloom instances
        # When a create last used each region: a sweep whose listing started before
        # that may have missed the new nodes, and must not drop the region.
        self._touched: dict[str, float] = {}
        self._scanned_at = float("-inf")
        self._zone_names: dict[str, dict[str, str]] = {}

    def catalog(self) -> cat.Catalog:
        return self._catalog.get()

    # -- offers

    def offers(self, infra: str, resources: dict[str, Any], num_nodes: int) -> list[Offer]:
        parts = [*infra.split("/"), "", ""][:3]
        region, zone = (p if p and p != "*" else None for p in parts[1:3])
        regions = set(self.api.regions())
        if region is not None and region not in regions:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"{self.name} has no region {region!r} in the catalog or the config",
                where=Where(infra=infra, field="resources.infra"),
            )
        try:
            found = cat.offers(
                self.catalog(), "/".join([self.name, region or "*"]), resources, num_nodes,
                limit=10_000,
            )  # fmt: skip
        except ValueError as e:
            field = str(e).split(":", 1)[0]
            raise provider_error(
                ErrorKind.INVALID_SPEC, str(e), where=Where(infra=infra, field=f"resources.{field}")
            ) from None
        out = []
        for o in found:
            named = self._named_zone(o) if o.region in regions else None
            if named is None or (zone is not None and named.zone != zone):
                continue
            out.append(named.model_copy(update={"capabilities": sorted(self.capabilities)}))
        return out[: cat.MAX_OFFERS]

    def _named_zone(self, offer: Offer) -> Offer | None:
        """The offer with its zone as this account names it (AWS's catalog has zone ids);
        None when the account has no such zone."""
        names_of = getattr(self.api, "zone_names", None)
        if offer.zone is None or names_of is None or offer.region is None:
            return offer
        names = self._zone_names.get(offer.region)
        if names is None:
            names = self._zone_names[offer.region] = names_of(offer.region)
        name = names.get(offer.zone)
        return offer.model_copy(update={"zone": name}) if name else None

    # -- nodes

    def _place(self, req: ProvisionInput) -> Offer:
        if req.offer is not None and req.offer.region and req.offer.instance_type:
            return req.offer
        offers = self.offers(req.infra, req.resources, req.num_nodes)
        if not offers:
            raise provider_error(
                ErrorKind.NO_CAPACITY,
                f"no {self.name} instance type in the catalog meets the resources",
                where=Where(infra=req.infra),
            )
        return offers[0]

    def create(self, req: ProvisionInput) -> ClusterHandle:
        safe_name(req.cluster)
        if not req.owner:
            raise provider_error(ErrorKind.INVALID_SPEC, "a cloud cluster needs an owner")
        offer = self._place(req)
        assert offer.region is not None and offer.instance_type is not None
        region = offer.region
        where = Where(
            infra=self.name, region=region, zone=offer.zone, instance_type=offer.instance_type
        )
        with self._lock:
            self._active.add(region)
            self._touched[region] = time.monotonic()
        have = self.api.list_instances(region, req.owner)
        lost = [i for i in have if i.state in (NodeState.PREEMPTED, NodeState.STOPPED)]
        if lost:
            # Reclaimed (or stopped) while this launch was under way: start over elsewhere.
            self.api.delete_instances(region, req.owner)
            raise provider_error(
                ErrorKind.NO_CAPACITY, "a node was reclaimed while launching", where=where
            )
        present = {i.rank for i in have}
        missing = [r for r in range(req.num_nodes) if r not in present]
        if missing:
            made = self.api.create_instances(self._request(req, offer, missing))
            have = [*have, *made]
            if any(i.state is not NodeState.UP or not self._address(i) for i in made):
                # One look now: a VM that is already up (or has its address) spares the
                # launch a describe round trip.
                have = self.api.list_instances(region, req.owner) or have
        by_rank = {i.rank: i for i in have if 0 <= i.rank < req.num_nodes}
        nodes = [self._node(by_rank[r], offer) for r in range(req.num_nodes) if r in by_rank]
        if len(nodes) != req.num_nodes:
            raise provider_error(
                ErrorKind.NO_CAPACITY,
                f"{len(nodes)} of {req.num_nodes} nodes were created",
                where=where,
            )
        with self._lock:
            # Again now the nodes exist: a sweep that listed while they were being made
            # (Azure shows a VM only once its create is done) may have dropped it.
            self._active.add(region)
            self._touched[region] = time.monotonic()
        zone = next((i.zone for i in have if i.zone), offer.zone)
        return ClusterHandle(
            cluster=req.cluster,
            infra="/".join(p for p in (self.name, region, zone) if p),
            nodes=nodes,
            owner=req.owner,
            region=region,
            zone=zone,
            instance_type=offer.instance_type,
            spot=offer.spot,
            capabilities=sorted(self.capabilities),
        )

    def _request(self, req: ProvisionInput, offer: Offer, ranks: list[int]) -> InstanceRequest:
        res = req.resources
        image = res.get("image_id")
        if isinstance(image, dict):
            image = image.get(offer.region or "") or image.get(None)
        # Only GCP's N1 hosts take attached accelerators; other types carry theirs.
        attach = offer.instance_type.startswith("n1-") if offer.instance_type else False
        # Whom the watcher tells when a node is reclaimed: the workflow this activity is for.
        workflow_id = activity.info().workflow_id if activity.in_activity() else None
        return InstanceRequest(
            cluster=req.cluster,
            owner=req.owner,
            region=offer.region or "",
            zone=offer.zone,
            instance_type=offer.instance_type or "",
            ranks=ranks,
            ssh_user=self.ssh_user,
            ssh_public_key=ensure_key(self.key_file),
            workflow_id=workflow_id,
            spot=offer.spot,
            accelerators={k: int(v) for k, v in offer.accelerators.items()} if attach else {},
            disk_size_gb=int(res.get("disk_size") or DEFAULT_DISK_GB),
            disk_tier=(str(res["disk_tier"]).lower() if res.get("disk_tier") else None),
            image_id=str(image) if image else None,
            ports=[str(p) for p in res.get("ports") or []],
            labels={str(k): str(v) for k, v in (res.get("labels") or {}).items()},
        )

    def _address(self, inst: Instance) -> str:
        ip = inst.private_ip if self.use_internal_ips else (inst.public_ip or inst.private_ip)
        return ip or ""

    def _node(self, inst: Instance, offer: Offer | None) -> NodeInfo:
        ip = self._address(inst)
        home = "/root" if self.ssh_user == "root" else f"/home/{self.ssh_user}"
        gpus = {k: int(v) for k, v in offer.accelerators.items()} if offer else {}
        return NodeInfo(
            rank=inst.rank,
            node_id=inst.id,
            ip=ip,
            root=f"{home}/{NODE_DIR}/{ip}_{self.ssh_port}",
            ssh_user=self.ssh_user,
            ssh_port=self.ssh_port,
            identity_file=str(self.key_file),
            gpus=gpus,
            state=self._reachable(inst, ip),
        )

    def _reachable(self, inst: Instance, ip: str) -> NodeState:
        """UP only once SSH answers: a VM the cloud calls running may still be booting."""
        if inst.state is NodeState.UP and not (ip and _port_open(ip, self.ssh_port)):
            return NodeState.PENDING
        return inst.state

    def describe(self, handle: ClusterHandle) -> list[NodeState]:
        return [n.state for n in self.describe_nodes(handle)]

    def describe_nodes(self, handle: ClusterHandle) -> list[NodeInfo]:
        """A VM gets its address while it boots (none when created): each node is
        given the one it has now, and is UP once SSH answers there."""
        region = handle.region or self._region_of(handle.infra)
        by_rank = {i.rank: i for i in self.api.list_instances(region or "", handle.owner)}
        out = []
        for node in handle.nodes:
            inst = by_rank.get(node.rank)
            if inst is None:
                out.append(node.model_copy(update={"state": NodeState.GONE}))
                continue
            now = self._node(inst, None)
            out.append(node.model_copy(update={"ip": now.ip, "root": now.root, "state": now.state}))
        return out

    def terminate(self, ref: ClusterRef) -> None:
        if not ref.owner:
            raise provider_error(ErrorKind.INVALID_SPEC, "terminate needs the cluster's owner")
        region = (ref.handle.region if ref.handle else None) or self._region_of(ref.infra)
        regions = [region] if region else self.api.regions()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda r: self.api.delete_instances(r, ref.owner), regions))
        if ref.handle is not None:
            for node in ref.handle.nodes:
                self.conns.drop(self._host(node))

    @staticmethod
    def _region_of(infra: str) -> str | None:
        parts = infra.split("/")
        return parts[1] if len(parts) > 1 and parts[1] not in ("", "*") else None

    def stop(self, handle: ClusterHandle) -> None:
        region = handle.region or self._region_of(handle.infra) or ""
        self.api.stop_instances(region, handle.owner)
        for node in handle.nodes:
            self.conns.drop(self._host(node))

    def start(self, handle: ClusterHandle) -> ClusterHandle:
        """Start the stopped nodes and wait (this activity heartbeats) until SSH answers
        on each; addresses may have changed."""
        region = handle.region or self._region_of(handle.infra) or ""
        self.api.start_instances(region, handle.owner)
        deadline = time.monotonic() + _BOOT_WAIT
        while True:
            by_rank = {i.rank: i for i in self.api.list_instances(region, handle.owner)}
            nodes = []
            for old in handle.nodes:
                inst = by_rank.get(old.rank)
                if inst is None:
                    raise provider_error(
                        ErrorKind.NO_CAPACITY,
                        f"node {old.rank} of {handle.cluster} no longer exists",
                        where=Where(infra=self.name, region=region),
                    )
                nodes.append(self._node(inst, None).model_copy(update={"gpus": old.gpus}))
            if all(n.state is NodeState.UP for n in nodes):
                return handle.model_copy(update={"nodes": nodes})
            if time.monotonic() > deadline:
                raise provider_error(
                    ErrorKind.NO_CAPACITY,
                    f"nodes of {handle.cluster} not up {_BOOT_WAIT:.0f}s after start",
                    where=Where(infra=self.name, region=region),
                )
            time.sleep(2)

    def _host(self, node: NodeInfo) -> SSHHost:
        return self._host_at(node.ip, node.ssh_port, node.ssh_user, node.identity_file)

    def _host_at(
        self, ip: str, port: int | None = None, user: str | None = None, key: str | None = None
    ) -> SSHHost:
        return SSHHost(
            pool=self.name,
            ip=ip,
            port=port or self.ssh_port,
            user=user or self.ssh_user,
            identity_file=key or str(self.key_file),
        )

    def runner(self, node: NodeInfo) -> Runner:
        return SSHRunner(self._host(node), self.conns)

    def check(self) -> list[CheckResult]:
        result = self.api.check()
        return [result.model_copy(update={"capabilities": sorted(self.capabilities)})]

    # -- the watcher

    def watch_keys(self) -> list[str]:
        # One watcher per cloud: a watcher per region would be dozens of long-running
        # activities for regions that are mostly empty; the sweep lists each region that
        # holds skyloom instances once per round instead (one call per region).
        return [self.name]

    def _regions_to_list(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            if now - self._scanned_at >= FULL_SCAN_SECONDS:
                self._scanned_at = now
                return self.api.regions()
            return sorted(self._active)

    def sweep(self, key: str) -> list[WatchedObservation]:
        """Preempted nodes from one listing per active region; ended phases from every
        running node's watch channel (as for SSH hosts)."""
        regions = self._regions_to_list()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            listed = dict(zip(regions, pool.map(self.api.list_instances, regions), strict=True))
        out: list[WatchedObservation] = []
        hosts: list[SSHHost] = []
        with self._lock:
            empty = {
                r for r, insts in listed.items()
                if not insts and self._touched.get(r, float("-inf")) < started
            }  # fmt: skip
            self._active = (self._active | set(listed)) - empty
        for insts in listed.values():
            for inst in insts:
                if inst.state is NodeState.PREEMPTED and inst.workflow_id:
                    obs = Observation(
                        cluster=inst.cluster,
                        rank=inst.rank,
                        state=NodeState.PREEMPTED,
                        owner=inst.owner,
                        reason=f"{self.name} reclaimed spot instance {inst.id} ({inst.zone})",
                    )
                    out.append(WatchedObservation(workflow_id=inst.workflow_id, observation=obs))
                elif inst.state is NodeState.UP and self._address(inst):
                    hosts.append(self._host_at(self._address(inst)))
        watches = self._watches_of()
        watches.sync(hosts)
        return out + watches.observations()

    def _watches_of(self) -> Any:
        if self._watches is None:
            from skyloom.activities.providers.ssh_watch import HostWatches

            self._watches = HostWatches(self.conns, grace=self.unreachable_grace)
        return self._watches

    def close(self) -> None:
        if self._watches is not None:
            self._watches.close()
        self.conns.close_all()
