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
import threading
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
# A node with no instance type and no accelerators is picked as SkyPilot picks its
# default instance type: from each cloud's current general, memory and compute families,
# with 4 GB of memory per vCPU unless memory is given, and 8+ vCPUs unless cpus or memory
# is (m6i.2xlarge, n2-standard-8, Standard_D8s_v5 for an empty task).
DEFAULT_CPUS = "8+"
DEFAULT_MEMORY_PER_CPU = 4.0
DEFAULT_FAMILIES = {
    "aws": re.compile(r"^(m6i|c6i|r6i)\."),
    "gcp": re.compile(r"^n2-(standard|highmem|highcpu)-"),
    "azure": re.compile(r"^Standard_(D\d+s_v5|E\d+s_v5|F\d+s_v2)$"),
}
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


class CatalogStore:
    """The catalog a worker uses: refreshed copies under `override` win over the shipped
    ones, and are read again when one changes (after `skyloom catalog refresh`)."""

    def __init__(self, override: Path | None = None, fixed: Catalog | None = None) -> None:
        self.override = override
        self._fixed = fixed
        self._lock = threading.Lock()
        self._stamp: tuple[float | None, ...] | None = None
        self._catalog: Catalog | None = None

    def _stamp_now(self) -> tuple[float | None, ...]:
        out: list[float | None] = []
        for cloud in CLOUDS:
            try:
                out.append(
                    None
                    if self.override is None
                    else (self.override / f"{cloud}.csv").stat().st_mtime
                )
            except OSError:
                out.append(None)
        return tuple(out)

    def get(self) -> Catalog:
        if self._fixed is not None:
            return self._fixed
        stamp = self._stamp_now()
        with self._lock:
            if self._catalog is None or stamp != self._stamp:
                self._catalog, self._stamp = load(self.override), stamp
            return self._catalog


# ---- what each GPU costs where (show-gpus) -----------------------------------------------


@dataclass(frozen=True)
class GpuRow:
    """One accelerator offer: `count` of `accelerator` on `instance_type` (None: a GCP
    GPU that attaches to a host, priced alone) in `region`, at its cheapest zone."""

    cloud: str
    region: str
    accelerator: str
    count: float
    instance_type: str | None
    vcpus: float
    memory_gb: float
    price: float | None
    spot_price: float | None


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def gpu_rows(
    catalog: Catalog,
    *,
    name: str | None = None,
    count: float | None = None,
    cloud: str | None = None,
    region: str | None = None,
    all_regions: bool = False,
) -> list[GpuRow]:
    """Which accelerators each cloud sells, how many per machine, on which instance
    types, at what on-demand and spot price per hour: one row per region with
    `all_regions`, else the cheapest region of each (cloud, GPU, count, instance type).
    Sorted by GPU, count, then price."""
    by_place: dict[tuple[str, str, float, str, str], GpuRow] = {}
    for v in catalog.vms:
        if v.accelerator is None or v.accelerator_count <= 0:
            continue
        if name is not None and v.accelerator.lower() != name.lower():
            continue
        if count is not None and abs(v.accelerator_count - count) > 1e-6:
            continue
        if (cloud is not None and v.cloud != cloud) or (region is not None and v.region != region):
            continue
        key = (v.cloud, v.accelerator, v.accelerator_count, v.instance_type, v.region)
        have = by_place.get(key)
        by_place[key] = GpuRow(
            cloud=v.cloud,
            region=v.region,
            accelerator=v.accelerator,
            count=v.accelerator_count,
            instance_type=v.instance_type or None,
            vcpus=v.vcpus,
            memory_gb=v.memory_gb,
            price=_min(have.price if have else None, v.price),
            spot_price=_min(have.spot_price if have else None, v.spot_price),
        )
    memo: dict[tuple[str, float], Any] = {}
    shown = (_with_gcp_machine(catalog, r, memo) for r in by_place.values())
    rows = [r for r in shown if r is not None]
    if not all_regions:
        cheapest: dict[tuple[str, str, float, str | None], GpuRow] = {}
        for r in rows:
            k = (r.cloud, r.accelerator, r.count, r.instance_type)
            if k not in cheapest or _row_price(r) < _row_price(cheapest[k]):
                cheapest[k] = r
        rows = list(cheapest.values())
    return sorted(
        rows, key=lambda r: (r.accelerator.lower(), r.count, _row_price(r), r.cloud, r.region)
    )


def _gcp_machines(
    catalog: Catalog, accelerator: str, count: float
) -> dict[tuple[str, bool], tuple[float, VM]]:
    """Per (region, spot): the cheapest machine of the GPU's own family carrying `count`
    of it, priced with the GPUs."""
    need = Need(
        cloud="gcp", region=None, zone=None, instance_type=None, accelerator=accelerator,
        accelerator_count=count, cpus=None, memory=None, spot=False,
    )  # fmt: skip
    best: dict[tuple[str, bool], tuple[float, VM]] = {}
    for spot in (False, True):
        for price, host, _ in _gcp_hosted(catalog.vms, replace(need, spot=spot)):
            key = (host.region, spot)
            if key not in best or (price, host.instance_type) < (
                best[key][0],
                best[key][1].instance_type,
            ):
                best[key] = (price, host)
    return best


def _with_gcp_machine(
    catalog: Catalog, row: GpuRow, memo: dict[tuple[str, float], Any]
) -> GpuRow | None:
    """A GCP GPU that runs only on its own machine family (A100 on a2, L4 on g2, ...)
    shown on that machine, priced with it (None: no such machine in the region); the
    GPUs that attach to any N1 host stay as they are ("attachable", priced alone)."""
    if row.cloud != "gcp" or row.instance_type or row.accelerator.lower() not in GCP_GPU_FAMILIES:
        return row
    key = (row.accelerator, row.count)
    if key not in memo:
        memo[key] = _gcp_machines(catalog, row.accelerator, row.count)
    on_demand, spot = memo[key].get((row.region, False)), memo[key].get((row.region, True))
    if on_demand is None and spot is None:
        return None
    host = on_demand[1] if on_demand else spot[1] if spot else None
    assert host is not None
    return replace(
        row,
        instance_type=host.instance_type,
        vcpus=host.vcpus,
        memory_gb=host.memory_gb,
        price=on_demand[0] if on_demand else None,
        spot_price=spot[0] if spot else None,
    )


def _row_price(r: GpuRow) -> tuple[float, float, str]:
    inf = float("inf")
    return (
        r.price if r.price is not None else inf,
        r.spot_price if r.spot_price is not None else inf,
        r.instance_type or "",
    )


def accelerator_names(catalog: Catalog) -> list[str]:
    return sorted({v.accelerator for v in catalog.vms if v.accelerator}, key=str.lower)


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
    # A default node (no instance type, no accelerators): default families only, and
    # at least this much memory per vCPU when memory is not given.
    default_node: bool = False
    memory_per_cpu: float | None = None

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
        default_node = not acc and not instance_type
        if default_node and cpus is None and memory is None:
            cpus = bound(DEFAULT_CPUS, "cpus")
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
            default_node=default_node,
            memory_per_cpu=DEFAULT_MEMORY_PER_CPU if default_node and memory is None else None,
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
    if need.default_node and not host:
        family = DEFAULT_FAMILIES.get(vm.cloud)
        if family is not None and not family.search(vm.instance_type):
            return False
    if need.memory_per_cpu is not None and vm.memory_gb < need.memory_per_cpu * vm.vcpus - 1e-6:
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
    cheapest instance type there), cheapest first; priced per node (Offer's unit), so
    `num_nodes` does not change the order (the caller prices the cluster).
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
    return [_offer(price, vm, gpu, need) for price, vm, gpu in ranked[:limit]]


def _offer(price: float, vm: VM, gpu: VM | None, need: Need) -> Offer:
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
        price_per_hour=round(price, 6),
    )
