"""The catalog of cloud VMs (instance types, accelerators, vCPUs, memory, regions, zones,
on-demand and spot prices) and the optimizer over it.

The shipped data (data/<cloud>.csv, dated in its `# read:` line) comes from public price
facts; `skyloom catalog refresh` writes a newer copy under the worker's home, which wins.
`offers` is a pure function of the catalog and a candidate's resources: every offer
meets every requirement, cheapest first (tested with hypothesis, benchmarked in
bench/optimizer.py).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from skyloom.activities.models import Offer

CLOUDS = ("aws", "gcp", "azure")
COLUMNS = (
    "InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB",
    "Price", "SpotPrice", "Region", "AvailabilityZone",
)  # fmt: skip
# With no cpus, memory, instance type or accelerators, SkyPilot's default node: 8 vCPUs
# and 4 GB of memory per vCPU (m6i.2xlarge, n2-standard-8, Standard_D8s_v5).
DEFAULT_CPUS = "8+"
DEFAULT_MEMORY_PER_CPU = 4.0
# Placements returned per candidate: enough to fail over across every zone of the few
# cheapest regions, few enough to keep the plan small in workflow history.
MAX_OFFERS = 48
# GCP prices a GPU apart from the machine it runs on: most attach to an N1 host (the
# cheapest that fits), the newer ones only run on their own machine family, named by
# the GPU count (a2-highgpu-4g: 4 A100s) or, for L4, by these counts.
GCP_GPU_HOSTS = ("n1-highmem-", "n1-standard-")
GCP_GPU_FAMILIES = {
    "a100": ("a2-highgpu-", "a2-megagpu-"),
    "a100-80gb": ("a2-ultragpu-",),
    "h100": ("a3-highgpu-", "a3-edgegpu-"),
    "h100-mega": ("a3-megagpu-",),
    "h200": ("a3-ultragpu-",),
    "b200": ("a4-highgpu-",),
    "l4": ("g2-standard-",),
}
_G2_L4 = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}


def gcp_host_fits(instance_type: str, vcpus: float, accelerator: str, count: float) -> bool:
    """Whether a GCP machine type can carry `count` of `accelerator`."""
    families = GCP_GPU_FAMILIES.get(accelerator.lower())
    if families is None:
        return instance_type.startswith(GCP_GPU_HOSTS)
    if not instance_type.startswith(families):
        return False
    if accelerator.lower() == "l4":
        return _G2_L4.get(int(vcpus)) == count
    m = re.search(r"-(\d+)g(?:-|$)", instance_type)
    return m is not None and int(m.group(1)) == count


@dataclass(frozen=True, slots=True)
class VM:
    """One row: an instance type (or a GCP attachable accelerator) at one place."""

    cloud: str
    instance_type: str  # "" for a GCP accelerator that attaches to an N1 host
    accelerator: str | None
    accelerator_count: float
    vcpus: float
    memory_gb: float
    price: float | None
    spot_price: float | None
    region: str
    zone: str | None


class CatalogError(ValueError):
    """A catalog file that cannot be read; names the file and line."""


@dataclass(frozen=True)
class Catalog:
    vms: tuple[VM, ...]
    # Per cloud: where its data came from and when it was read (the `# ` lines).
    about: dict[str, list[str]]

    def regions(self, cloud: str) -> list[str]:
        return sorted({v.region for v in self.vms if v.cloud == cloud})

    def of(self, cloud: str) -> list[VM]:
        return [v for v in self.vms if v.cloud == cloud]


def parse(cloud: str, text: str, source: str) -> tuple[list[VM], list[str]]:
    """The rows of one catalog file and its `# ` header lines."""
    about = [line[2:].strip() for line in text.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    reader = csv.DictReader(io.StringIO(body))
    missing = set(COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise CatalogError(f"{source}: missing columns {', '.join(sorted(missing))}")
    out = []
    for n, row in enumerate(reader, start=2):
        try:
            out.append(
                VM(
                    cloud=cloud,
                    instance_type=row["InstanceType"].strip(),
                    accelerator=row["AcceleratorName"].strip() or None,
                    accelerator_count=_num(row["AcceleratorCount"]) or 0.0,
                    vcpus=_num(row["vCPUs"]) or 0.0,
                    memory_gb=_num(row["MemoryGiB"]) or 0.0,
                    price=_num(row["Price"]),
                    spot_price=_num(row["SpotPrice"]),
                    region=row["Region"].strip(),
                    zone=row["AvailabilityZone"].strip() or None,
                )
            )
        except ValueError as e:
            raise CatalogError(f"{source}: data line {n}: {e}") from None
    return out, about


def _num(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def load(override: Path | None = None) -> Catalog:
    """Every cloud's catalog: `override/<cloud>.csv` (a refreshed copy) where present,
    else the shipped one."""
    vms: list[VM] = []
    about: dict[str, list[str]] = {}
    for cloud in CLOUDS:
        path = override / f"{cloud}.csv" if override is not None else None
        if path is not None and path.exists():
            text, source = path.read_text(), str(path)
        else:
            shipped = package_files.files(__package__).joinpath("data", f"{cloud}.csv")
            if not shipped.is_file():
                continue
            text, source = shipped.read_text(), f"{cloud}.csv (shipped)"
        rows, about[cloud] = parse(cloud, text, source)
        vms.extend(rows)
    return Catalog(tuple(vms), about)


# ---- requirements -----------------------------------------------------------------------

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(\+?)\s*$")


@dataclass(frozen=True)
class Bound:
    """`4` (exactly 4) or `4+` (at least 4)."""

    value: float
    at_least: bool

    def fits(self, have: float) -> bool:
        return have >= self.value - 1e-9 if self.at_least else abs(have - self.value) < 1e-6


def bound(value: object, what: str) -> Bound | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    text = re.sub(r"\s*(gb|g)\s*(\+?)$", r"\2", text)  # memory: "32GB+" means 32+
    m = _AMOUNT.match(text)
    if m is None:
        raise ValueError(f"{what}: {value!r} is not a number or a number followed by +")
    return Bound(float(m.group(1)), bool(m.group(2)))


@dataclass(frozen=True)
class Need:
    """What a candidate asks of one node."""

    cloud: str | None  # None: any
    region: str | None
    zone: str | None
    instance_type: str | None
    accelerator: str | None
    accelerator_count: float
    cpus: Bound | None
    memory: Bound | None
    spot: bool

    @classmethod
    def of(cls, infra: str, resources: dict[str, Any]) -> Need:
        parts = [p if p and p != "*" else None for p in infra.split("/")] + [None, None]
        cloud, region, zone = (parts[0] or "").lower() or None, parts[1], parts[2]
        acc: dict[str, Any] = resources.get("accelerators") or {}
        if len(acc) > 1:
            raise ValueError("accelerators: one name per candidate (alternatives are any_of)")
        name, count = next(iter(acc.items())) if acc else (None, 0)
        cpus = bound(resources.get("cpus"), "cpus")
        memory = bound(resources.get("memory"), "memory")
        instance_type = resources.get("instance_type")
        if cpus is None and memory is None and not acc and not instance_type:
            cpus = bound(DEFAULT_CPUS, "cpus")
            memory = Bound(8 * DEFAULT_MEMORY_PER_CPU, True)
        return cls(
            cloud=cloud,
            region=region,
            zone=zone,
            instance_type=instance_type,
            accelerator=name,
            accelerator_count=float(count or 1) if name else 0.0,
            cpus=cpus,
            memory=memory,
            spot=bool(resources.get("use_spot")),
        )


def _fits(vm: VM, need: Need, host: bool = False) -> bool:
    """Whether vm meets need (`host`: as the machine a GCP accelerator attaches to)."""
    if need.cloud is not None and vm.cloud != need.cloud:
        return False
    if need.region is not None and vm.region != need.region:
        return False
    if need.zone is not None and vm.zone is not None and vm.zone != need.zone:
        return False
    if need.instance_type is not None and vm.instance_type != need.instance_type:
        return False
    if (vm.spot_price if need.spot else vm.price) is None:
        return False
    if need.accelerator is None:
        gpu_vm = vm.accelerator is not None or (_gcp_gpu_machine(vm) and not host)
        if need.instance_type is None and gpu_vm:
            return False  # no GPU node for a task that asked for none
    elif (
        vm.accelerator is None
        or vm.accelerator.lower() != need.accelerator.lower()
        or abs(vm.accelerator_count - need.accelerator_count) > 1e-6
    ):
        return False
    if need.cpus is not None and not need.cpus.fits(vm.vcpus):
        return False
    return need.memory is None or need.memory.fits(vm.memory_gb)


_GPU_MACHINES = tuple(p for fams in GCP_GPU_FAMILIES.values() for p in fams)


def _gcp_gpu_machine(vm: VM) -> bool:
    """A GCP machine made to carry GPUs (priced without them in the catalog)."""
    return vm.cloud == "gcp" and vm.instance_type.startswith(_GPU_MACHINES)


def _price(vm: VM, spot: bool) -> float:
    p = vm.spot_price if spot else vm.price
    assert p is not None
    return p


def _gcp_hosted(vms: Iterable[VM], need: Need) -> list[tuple[float, VM, VM | None]]:
    """GCP's attachable accelerators, each with the cheapest N1 host in its zone that
    meets cpus/memory (by default 4 vCPUs per accelerator, as many GPU jobs want)."""
    gpus = [
        v
        for v in vms
        if v.cloud == "gcp" and not v.instance_type and v.accelerator is not None
        and _fits(v, replace(need, instance_type=None, cpus=None, memory=None))
    ]  # fmt: skip
    if not gpus:
        return []
    special = (need.accelerator or "").lower() in GCP_GPU_FAMILIES
    cpus = need.cpus or (None if special else Bound(max(4.0, 4.0 * need.accelerator_count), True))
    host_need = replace(
        need, cloud="gcp", instance_type=None, accelerator=None, accelerator_count=0, cpus=cpus
    )
    hosts: dict[str | None, VM] = {}
    name, count = need.accelerator or "", need.accelerator_count
    for v in vms:
        if (
            v.cloud == "gcp"
            and v.instance_type
            and gcp_host_fits(v.instance_type, v.vcpus, name, count)
            and _fits(v, host_need, host=True)
        ):
            best = hosts.get(v.zone)
            if best is None or (_price(v, need.spot), v.instance_type) < (
                _price(best, need.spot),
                best.instance_type,
            ):
                hosts[v.zone] = v
    out: list[tuple[float, VM, VM | None]] = []
    for g in gpus:
        host = hosts.get(g.zone)
        if host is not None:
            out.append((_price(g, need.spot) + _price(host, need.spot), host, g))
    return out


def offers(
    catalog: Catalog, infra: str, resources: dict[str, Any], num_nodes: int, limit: int = MAX_OFFERS
) -> list[Offer]:
    """Where `num_nodes` nodes meeting `resources` could run, one offer per zone (the
    cheapest instance type there), cheapest first; price is for the whole cluster.
    Raises ValueError naming the field for a requirement that cannot be read."""
    need = Need.of(infra, resources)
    rows: list[tuple[float, VM, VM | None]]
    rows = [
        (_price(v, need.spot), v, None) for v in catalog.vms if v.instance_type and _fits(v, need)
    ]
    if need.accelerator is not None and need.instance_type is None and need.cloud in (None, "gcp"):
        rows.extend(_gcp_hosted(catalog.vms, need))
    best: dict[tuple[str, str, str | None], tuple[float, VM, VM | None]] = {}
    for price, vm, gpu in rows:
        key = (vm.cloud, vm.region, vm.zone)
        have = best.get(key)
        if have is None or (price, vm.instance_type) < (have[0], have[1].instance_type):
            best[key] = (price, vm, gpu)
    ranked = sorted(best.values(), key=lambda r: (r[0], r[1].cloud, r[1].region, r[1].zone or ""))
    return [_offer(price, vm, gpu, need, num_nodes) for price, vm, gpu in ranked[:limit]]


def _offer(price: float, vm: VM, gpu: VM | None, need: Need, num_nodes: int) -> Offer:
    acc = gpu or vm
    return Offer(
        infra=vm.cloud,
        region=vm.region,
        zone=vm.zone,
        instance_type=vm.instance_type,
        cpus=vm.vcpus,
        memory_gb=vm.memory_gb,
        accelerators={acc.accelerator: acc.accelerator_count} if acc.accelerator else {},
        spot=need.spot,
        price_per_hour=round(price * num_nodes, 6),
    )
