"""`skyloom catalog refresh`: rebuild a cloud's catalog file (the format of
data/<cloud>.csv) from the cloud's own APIs, and write it where `catalog.load` looks.

Instance types and where they are offered come from each cloud's compute API, prices
from its price API (AWS Price List and spot price history, the Cloud Billing Catalog,
the Azure Retail Prices API). One function per cloud takes its SDK clients and an HTTP
getter, so tests drive the real SDKs against recorded responses; `refresh` checks the
result with `catalog.parse` and replaces the old file atomically, so a failed refresh
leaves it as it was. A row needs an on-demand or a spot price: anything else could
never be placed, and is left out.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from skyloom.activities.catalog import CLOUDS, COLUMNS, parse

# GET a URL, answer its JSON body; raises on a status that is not 2xx. Production passes
# `session_get(AuthorizedSession(...))` (GCP) or `urllib_get` (Azure's public prices).
JsonGet = Callable[[str], Any]

GCP_BILLING_URL = "https://cloudbilling.googleapis.com"
GCP_COMPUTE_SERVICE = "6F81-5844-456A"  # Compute Engine in the Cloud Billing Catalog
AZURE_PRICES_URL = "https://prices.azure.com"
# Where the AWS Price List API is served (also eu-central-1 and ap-south-1).
AWS_PRICING_REGION = "us-east-1"
_AWS_DESCRIBE_BATCH = 100  # the most InstanceTypes one DescribeInstanceTypes call takes
HTTP_TIMEOUT = 60.0

# The CPU-only sizes the shipped files carry; every accelerated type is always kept.
AWS_CPU_TYPES = frozenset(
    [
        f"{family}.{size}"
        for family in ("m6i", "c6i", "r6i")
        for size in ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
    ]
    + [f"t3.{size}" for size in ("medium", "large", "xlarge", "2xlarge")]
)
GCP_CPU_TYPES = frozenset(
    [f"n1-{kind}-{n}" for kind in ("standard", "highmem") for n in (2, 4, 8, 16, 32)]
    + [f"n2-standard-{n}" for n in (2, 4, 8, 16, 32)]
    + [f"e2-standard-{n}" for n in (2, 4, 8, 16)]
)
# Machine families built around their GPUs: every size is kept (priced without the GPUs,
# which are their own rows, as in the shipped file).
GCP_GPU_MACHINES = ("a2-", "a3-", "g2-")
AZURE_CPU_SIZES = frozenset(
    [f"Standard_D{n}s_v5" for n in (2, 4, 8, 16, 32)]
    + [f"Standard_E{n}s_v5" for n in (2, 4, 8, 16)]
    + [f"Standard_F{n}s_v2" for n in (2, 4, 8, 16)]
)

# GCP accelerator types → the catalog's names (the ones the optimizer and
# providers/gcp.py know); others (virtual workstations, retired models) are skipped.
GCP_ACCELERATORS = {
    "nvidia-tesla-t4": "T4",
    "nvidia-tesla-v100": "V100",
    "nvidia-tesla-p100": "P100",
    "nvidia-tesla-p4": "P4",
    "nvidia-l4": "L4",
    "nvidia-tesla-a100": "A100",
    "nvidia-a100-80gb": "A100-80GB",
    "nvidia-h100-80gb": "H100",
    "nvidia-h100-mega-80gb": "H100-MEGA",
    "nvidia-h200-141gb": "H200",
    "nvidia-b200": "B200",
}
# The model as the billing catalog's GPU SKU descriptions spell it (lowercased, after
# "Nvidia " / "Nvidia Tesla ") → the catalog's name.
_GCP_BILLED_GPUS = {
    "t4": "T4",
    "v100": "V100",
    "p100": "P100",
    "p4": "P4",
    "l4": "L4",
    "a100": "A100",
    "a100 80gb": "A100-80GB",
    "h100": "H100",
    "h100 80gb": "H100",
    "h100 80gb mega": "H100-MEGA",
    "h100 mega 80gb": "H100-MEGA",
    "h200": "H200",
    "h200 141gb": "H200",
    "b200": "B200",
}
# AWS names an A100 or V100 the same whatever its memory; the catalog tells them apart.
_AWS_BIG_MEMORY = {"A100": (80 * 1024, "A100-80GB"), "V100": (32 * 1024, "V100-32GB")}
# Azure's resource SKUs give a GPU count but no model: the size name says it (first match
# wins; ND96asr_v4 is the 40 GB A100, every other A100 size the 80 GB one).
_AZURE_GPUS = (
    (re.compile(r"^ND\d+asr_v4$"), "A100"),
    (re.compile(r"_A100_"), "A100-80GB"),
    (re.compile(r"_H100_"), "H100"),
    (re.compile(r"_H200_"), "H200"),
    (re.compile(r"_MI300X_"), "MI300X"),
    (re.compile(r"_T4_"), "T4"),
    (re.compile(r"_A10_"), "A10"),
    (re.compile(r"^ND\d+rs_v2$"), "V100-32GB"),
    (re.compile(r"^NC\d+r?s_v3$"), "V100"),
    (re.compile(r"^NV\d+as_v4$"), "Radeon MI25"),
    (re.compile(r"^NV\d+(s_v3)?(_Promo)?$"), "M60"),
    (re.compile(r"^NC\d+r?(_Promo)?$"), "K80"),
)


class RefreshError(RuntimeError):
    """A cloud API call failed, or gave nothing usable. `cloud` and `call` say which;
    nothing was written."""

    def __init__(self, cloud: str, call: str, detail: str) -> None:
        super().__init__(f"{cloud}: {call}: {detail}")
        self.cloud = cloud
        self.call = call
        self.detail = detail


@dataclass(frozen=True)
class Summary:
    """What a refresh wrote."""

    cloud: str
    path: Path
    rows: int
    regions: list[str]


@dataclass(frozen=True)
class _Row:
    instance_type: str
    accelerator: str | None
    accelerator_count: float
    vcpus: float
    memory_gib: float
    price: float | None
    spot_price: float | None
    region: str
    zone: str

    def cells(self) -> list[str]:
        return [
            self.instance_type,
            self.accelerator or "",
            _fmt(self.accelerator_count) if self.accelerator else "",
            _fmt(self.vcpus) if self.instance_type else "",
            _fmt(self.memory_gib) if self.instance_type else "",
            _fmt(self.price),
            _fmt(self.spot_price),
            self.region,
            self.zone,
        ]


# ---- sources and the refresh ------------------------------------------------------------


@dataclass(frozen=True)
class AWSSource:
    """`ec2(region)` is an EC2 client for that region; `pricing` a Price List client."""

    ec2: Callable[[str], Any]
    pricing: Any
    regions: Sequence[str]
    cpu_types: Collection[str] = AWS_CPU_TYPES
    cloud: str = field(default="aws", init=False)

    def build(self, now: datetime) -> str:
        return aws_csv(self.ec2, self.pricing, self.regions, now=now, cpu_types=self.cpu_types)


@dataclass(frozen=True)
class GCPSource:
    """compute_v1 MachineTypesClient and AcceleratorTypesClient, and a getter for the
    Cloud Billing Catalog."""

    project: str
    machine_types: Any
    accelerator_types: Any
    billing_get: JsonGet
    billing_url: str = GCP_BILLING_URL
    cpu_types: Collection[str] = GCP_CPU_TYPES
    cloud: str = field(default="gcp", init=False)

    def build(self, now: datetime) -> str:
        return gcp_csv(
            self.machine_types,
            self.accelerator_types,
            self.billing_get,
            self.project,
            now=now,
            billing_url=self.billing_url,
            cpu_types=self.cpu_types,
        )


@dataclass(frozen=True)
class AzureSource:
    """A ComputeManagementClient and a getter for the (public) Retail Prices API."""

    compute: Any
    prices_get: JsonGet
    regions: Sequence[str]
    prices_url: str = AZURE_PRICES_URL
    cpu_sizes: Collection[str] = AZURE_CPU_SIZES
    cloud: str = field(default="azure", init=False)

    def build(self, now: datetime) -> str:
        return azure_csv(
            self.compute,
            self.prices_get,
            self.regions,
            now=now,
            prices_url=self.prices_url,
            cpu_sizes=self.cpu_sizes,
        )


Source = AWSSource | GCPSource | AzureSource


def refresh(cloud: str, dest_dir: Path, source: Source, *, now: datetime | None = None) -> Summary:
    """Rebuild `cloud`'s catalog from `source` and write it to `<dest_dir>/<cloud>.csv`
    (the override `catalog.load(dest_dir)` reads). Raises RefreshError when an API call
    fails or nothing priced comes back; the old file is then left as it was."""
    if cloud not in CLOUDS:
        raise ValueError(f"unknown cloud {cloud!r} (one of {', '.join(CLOUDS)})")
    if source.cloud != cloud:
        raise ValueError(f"a {source.cloud} source cannot refresh {cloud}")
    text = source.build(now or datetime.now(UTC))
    rows, _ = parse(cloud, text, f"refreshed {cloud}.csv")
    if not rows:
        raise RefreshError(cloud, "refresh", "no priced instance type in the regions asked for")
    path = dest_dir / f"{cloud}.csv"
    _write_atomically(path, text)
    return Summary(cloud, path, len(rows), sorted({r.region for r in rows}))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---- production clients ---------------------------------------------------------------


def aws_source(regions: Sequence[str], *, session: Any = None) -> AWSSource:
    """Real boto3 clients from the default credential chain (or `session`)."""
    import boto3

    session = session or boto3.Session()
    clients: dict[str, Any] = {}

    def ec2(region: str) -> Any:
        if region not in clients:
            clients[region] = session.client("ec2", region_name=region)
        return clients[region]

    pricing = session.client("pricing", region_name=AWS_PRICING_REGION)
    return AWSSource(ec2=ec2, pricing=pricing, regions=tuple(regions))


def gcp_source(project: str | None = None, *, credentials: Any = None) -> GCPSource:
    """Real compute_v1 clients and an authorized session for the billing catalog, from
    Application Default Credentials (or `credentials`)."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import compute_v1

    if credentials is None:
        credentials, default_project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        project = project or default_project
    if not project:
        raise ValueError("gcp: no project given and none in the default credentials")
    return GCPSource(
        project=project,
        machine_types=compute_v1.MachineTypesClient(credentials=credentials),
        accelerator_types=compute_v1.AcceleratorTypesClient(credentials=credentials),
        billing_get=session_get(AuthorizedSession(credentials)),
    )


def azure_source(
    subscription_id: str, regions: Sequence[str], *, credential: Any = None
) -> AzureSource:
    """A real ComputeManagementClient (DefaultAzureCredential unless given one); the
    retail prices need no credential."""
    from azure.mgmt.compute import ComputeManagementClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return AzureSource(
        compute=ComputeManagementClient(credential, subscription_id),
        prices_get=urllib_get,
        regions=tuple(regions),
    )


def session_get(session: Any, timeout: float = HTTP_TIMEOUT) -> JsonGet:
    """A JsonGet over a requests-style session (google-auth's AuthorizedSession)."""

    def get(url: str) -> Any:
        response = session.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()

    return get


def urllib_get(url: str) -> Any:
    """A JsonGet for public, unauthenticated APIs (the stdlib's HTTP client)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        return json.load(response)


# ---- AWS ---------------------------------------------------------------------------------


def aws_csv(
    ec2: Callable[[str], Any],
    pricing: Any,
    regions: Sequence[str],
    *,
    now: datetime,
    cpu_types: Collection[str] = AWS_CPU_TYPES,
) -> str:
    """AWS's catalog for `regions`: one row per instance type per zone ID offering it.

    Per region: DescribeAvailabilityZones (zone name → zone ID),
    DescribeInstanceTypeOfferings by zone ID, DescribeInstanceTypes for the offered types
    not described yet (vCPUs, memory, accelerators), the latest DescribeSpotPriceHistory
    price per type and zone, and the Price List's on-demand Linux price (`pricing` must
    be a client of the Price List endpoint)."""
    if not regions:
        raise ValueError("aws: no regions to refresh")
    rows: list[_Row] = []
    shapes: dict[str, Any] = {}  # every type described so far: the same in every region
    for region in regions:
        zone_ids = _aws_zone_ids(ec2(region), region)
        offered = _aws_offerings(ec2(region), region, set(zone_ids.values()))
        _aws_describe(ec2(region), region, {name for name, _ in offered} - shapes.keys(), shapes)
        spot = _aws_spot_prices(ec2(region), region, now, zone_ids)
        prices = _aws_on_demand(pricing, region)
        for name, zone in sorted(offered):
            shape = shapes.get(name)
            accelerator = _aws_accelerator(shape) if shape else None
            if shape is None or (name not in cpu_types and accelerator is None):
                continue
            price, spot_price = prices.get(name), spot.get((name, zone))
            if price is None and spot_price is None:
                continue
            rows.append(
                _Row(
                    instance_type=name,
                    accelerator=accelerator[0] if accelerator else None,
                    accelerator_count=accelerator[1] if accelerator else 0.0,
                    vcpus=float(shape["VCpuInfo"]["DefaultVCpus"]),
                    memory_gib=shape["MemoryInfo"]["SizeInMiB"] / 1024,
                    price=price,
                    spot_price=spot_price,
                    region=region,
                    zone=zone,
                )
            )
    header = [
        "source: AWS EC2 API DescribeInstanceTypes, DescribeAvailabilityZones, "
        "DescribeInstanceTypeOfferings (LocationType availability-zone-id), "
        "DescribeSpotPriceHistory (Linux/UNIX, latest price per type and zone); "
        "AWS Price List API GetProducts (AmazonEC2 OnDemand: Linux, Shared tenancy, "
        "no pre-installed software, Used capacity)",
        f"read: {now.date().isoformat()}",
        "scope: every type with GpuInfo, NeuronInfo, InferenceAcceleratorInfo or FpgaInfo, "
        f"plus {_listed(cpu_types)}; regions {', '.join(regions)}; "
        "types with neither an on-demand nor a spot price left out",
    ]
    return _csv(header, rows)


def _aws_describe(client: Any, region: str, names: set[str], shapes: dict[str, Any]) -> None:
    """Add the shapes of `names` (types offered in `region`) to `shapes`: only the types
    no earlier region had, so a refresh of many regions describes each type once."""
    ordered = sorted(names)
    with _calling("aws", f"ec2.DescribeInstanceTypes in {region}"):
        for i in range(0, len(ordered), _AWS_DESCRIBE_BATCH):
            batch = ordered[i : i + _AWS_DESCRIBE_BATCH]
            pages = client.get_paginator("describe_instance_types").paginate(InstanceTypes=batch)
            for page in pages:
                for shape in page["InstanceTypes"]:
                    shapes[shape["InstanceType"]] = shape


def _aws_zone_ids(client: Any, region: str) -> dict[str, str]:
    """Zone name (what spot prices name) → zone ID (what the catalog names; the same in
    every account), for the region's availability zones (not local or wavelength zones)."""
    with _calling("aws", f"ec2.DescribeAvailabilityZones in {region}"):
        zones = client.describe_availability_zones()["AvailabilityZones"]
        return {
            z["ZoneName"]: z["ZoneId"]
            for z in zones
            if z.get("ZoneType", "availability-zone") == "availability-zone"
        }


def _aws_offerings(client: Any, region: str, zone_ids: set[str]) -> set[tuple[str, str]]:
    """(instance type, zone ID) for every type offered in one of the region's zones."""
    offered = set()
    with _calling("aws", f"ec2.DescribeInstanceTypeOfferings in {region}"):
        pages = client.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone-id"
        )
        for page in pages:
            for offer in page["InstanceTypeOfferings"]:
                if offer["Location"] in zone_ids:
                    offered.add((offer["InstanceType"], offer["Location"]))
    return offered


def _aws_spot_prices(
    client: Any, region: str, now: datetime, zone_ids: dict[str, str]
) -> dict[tuple[str, str], float]:
    """The latest Linux spot price per (type, zone ID). With StartTime now, AWS answers
    the price in force at that time for every type and zone."""
    latest: dict[tuple[str, str], tuple[datetime, float]] = {}
    with _calling("aws", f"ec2.DescribeSpotPriceHistory in {region}"):
        pages = client.get_paginator("describe_spot_price_history").paginate(
            ProductDescriptions=["Linux/UNIX"], StartTime=now
        )
        for page in pages:
            for item in page["SpotPriceHistory"]:
                if not item["ProductDescription"].startswith("Linux/UNIX"):
                    continue
                zone = zone_ids.get(item["AvailabilityZone"])
                if zone is None:
                    continue
                key, when = (item["InstanceType"], zone), item["Timestamp"]
                if key not in latest or when > latest[key][0]:
                    latest[key] = (when, float(item["SpotPrice"]))
    return {key: price for key, (_, price) in latest.items()}


def _aws_on_demand(pricing: Any, region: str) -> dict[str, float]:
    """On-demand USD per hour per instance type in `region`, from the Price List."""
    filters = [
        {"Type": "TERM_MATCH", "Field": attribute, "Value": value}
        for attribute, value in (
            ("regionCode", region),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        )
    ]
    prices: dict[str, float] = {}
    with _calling("aws", f"pricing.GetProducts for {region}"):
        pages = pricing.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"
        )
        for page in pages:
            for entry in page["PriceList"]:
                product = json.loads(entry) if isinstance(entry, str) else entry
                attributes = product["product"]["attributes"]
                # Same filters, another operation: a licensed variant (RunInstances:xxxx).
                if attributes.get("operation", "RunInstances") != "RunInstances":
                    continue
                name = attributes.get("instanceType")
                usd = _aws_hourly_usd(product)
                if name and usd is not None:
                    prices[name] = min(usd, prices.get(name, math.inf))
    return prices


def _aws_hourly_usd(product: dict[str, Any]) -> float | None:
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if dimension.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                return float(usd)
    return None


def _aws_accelerator(shape: dict[str, Any]) -> tuple[str, float] | None:
    """(name, count) of the type's accelerator: a GPU, else a Neuron device (Trainium,
    Inferentia), else another inference accelerator, else an FPGA."""
    for info, devices in (
        ("GpuInfo", "Gpus"),
        ("NeuronInfo", "NeuronDevices"),
        ("InferenceAcceleratorInfo", "Accelerators"),
        ("FpgaInfo", "Fpgas"),
    ):
        found = (shape.get(info) or {}).get(devices) or []
        if not found:
            continue
        device = found[0]
        name = device["Name"]
        count = float(device.get("Count") or 0)
        if not count:  # a fraction of one GPU (g6f): a share of a logical GPU
            count = float(device.get("LogicalGpuCount", 1)) * float(
                device.get("GpuPartitionSize", 0)
            )
        memory = device.get("MemoryInfo", {}).get("SizeInMiB", 0)
        if name in _AWS_BIG_MEMORY and memory >= _AWS_BIG_MEMORY[name][0]:
            name = _AWS_BIG_MEMORY[name][1]
        return (name, count) if count > 0 else None
    return None


# ---- GCP ---------------------------------------------------------------------------------


def gcp_csv(
    machine_types: Any,
    accelerator_types: Any,
    billing_get: JsonGet,
    project: str,
    *,
    now: datetime,
    billing_url: str = GCP_BILLING_URL,
    cpu_types: Collection[str] = GCP_CPU_TYPES,
) -> str:
    """GCP's catalog: one row per machine type per zone (n1/n2/e2 sizes in `cpu_types`
    and every a2/a3/g2 type, priced without GPUs), and one row per attachable GPU count
    per zone with an empty InstanceType (the optimizer adds a host's price).

    Machine types and accelerator types come from compute's aggregated lists; prices
    from the Cloud Billing Catalog's Compute Engine SKUs: a machine costs its vCPUs times
    the family's core rate plus its GiB times the family's RAM rate in its region
    (on-demand, and spot from the Preemptible SKUs); a GPU its per-GPU rate times the
    count."""
    families = sorted({t.split("-")[0] for t in cpu_types} | {p[:-1] for p in GCP_GPU_MACHINES})
    wanted = f'name eq "({"|".join(families)})-.*"'
    rates = _gcp_rates(billing_get, billing_url)
    rows: list[_Row] = []
    carried: dict[tuple[str, str], set[int]] = {}  # (zone, accelerator type) → counts
    with _calling("gcp", "compute.machineTypes.aggregatedList"):
        pages = machine_types.aggregated_list(request={"project": project, "filter": wanted})
        for scope, listed in pages:
            zone = _last(scope)
            for mt in listed.machine_types:
                name = mt.name
                if not (name in cpu_types or name.startswith(GCP_GPU_MACHINES)):
                    continue
                if mt.deprecated.state in ("OBSOLETE", "DELETED"):
                    continue
                for acc in mt.accelerators:
                    carried.setdefault((zone, acc.guest_accelerator_type), set()).add(
                        acc.guest_accelerator_count
                    )
                region = _gcp_region(zone)
                family = name.split("-")[0]
                cpus, memory = float(mt.guest_cpus), mt.memory_mb / 1024
                price, spot = (
                    _gcp_machine_price(rates, family, region, cpus, memory, usage)
                    for usage in ("OnDemand", "Preemptible")
                )
                if price is None and spot is None:
                    continue
                rows.append(_Row(name, None, 0.0, cpus, memory, price, spot, region, zone))
    with _calling("gcp", "compute.acceleratorTypes.aggregatedList"):
        pages = accelerator_types.aggregated_list(request={"project": project})
        for scope, listed in pages:
            zone = _last(scope)
            region = _gcp_region(zone)
            for at in listed.accelerator_types:
                gpu = GCP_ACCELERATORS.get(at.name)
                if gpu is None or at.deprecated.state in ("OBSOLETE", "DELETED"):
                    continue
                # A GPU that comes with its own machine family is only ever had in the
                # counts those machines carry; an N1-attached one in 1, 2, 4 ... up to
                # the most one instance takes.
                counts = carried.get((zone, at.name)) or {
                    2**k for k in range(5) if 2**k <= at.maximum_cards_per_instance
                }
                on_demand = rates.get(("gpu", gpu, region, "OnDemand"))
                spot = rates.get(("gpu", gpu, region, "Preemptible"))
                if on_demand is None and spot is None:
                    continue
                for n in sorted(counts):
                    rows.append(
                        _Row(
                            "",
                            gpu,
                            float(n),
                            0.0,
                            0.0,
                            None if on_demand is None else on_demand * n,
                            None if spot is None else spot * n,
                            region,
                            zone,
                        )
                    )
    header = [
        "source: GCP Compute Engine API machineTypes.aggregatedList, "
        "acceleratorTypes.aggregatedList; Cloud Billing Catalog API "
        f"services/{GCP_COMPUTE_SERVICE}/skus (Compute: per-vCPU and per-GiB rates of "
        "each machine family, per-GPU rates; OnDemand and Preemptible usage)",
        f"read: {now.date().isoformat()}",
        f"scope: machine families {', '.join(p + '*' for p in GCP_GPU_MACHINES)} (priced "
        f"without their GPUs) and {_listed(cpu_types)}; attachable GPUs "
        f"({', '.join(sorted(set(GCP_ACCELERATORS.values())))}) as rows with an empty "
        "InstanceType; all zones; rows with neither an on-demand nor a spot price left out",
    ]
    return _csv(header, rows)


def _gcp_rates(get: JsonGet, base_url: str) -> dict[tuple[str, str, str, str], float]:
    """USD rates keyed by (kind, what, region, usage type): ("core"|"ram", family, ...)
    per vCPU-hour or GiB-hour, ("gpu", catalog GPU name, ...) per GPU-hour."""
    rates: dict[tuple[str, str, str, str], float] = {}
    token = ""
    with _calling("gcp", f"cloudbilling services/{GCP_COMPUTE_SERVICE}/skus"):
        while True:
            query = {"currencyCode": "USD", "pageSize": "5000"}
            if token:
                query["pageToken"] = token
            url = f"{base_url}/v1/services/{GCP_COMPUTE_SERVICE}/skus?{urlencode(query)}"
            page = get(url)
            for sku in page.get("skus", []):
                _gcp_rate(sku, rates)
            token = page.get("nextPageToken") or ""
            if not token:
                return rates


# "N1 Predefined Instance Core running in Americas", "E2 Instance Ram running in Iowa";
# not Custom, Sole Tenancy, Extended or commitment SKUs, whose words do not fit.
_MACHINE_SKU = re.compile(
    r"^(?P<family>[a-z][a-z0-9]*)(?: predefined)? instance (?P<what>core|ram) running in "
)
_GPU_SKU = re.compile(r"^nvidia (?:tesla )?(?P<model>.+?) gpu running in ")


def _gcp_rate(sku: dict[str, Any], rates: dict[tuple[str, str, str, str], float]) -> None:
    category = sku.get("category", {})
    usage = category.get("usageType")
    if category.get("resourceFamily") != "Compute" or usage not in ("OnDemand", "Preemptible"):
        return
    # Spot SKUs say so in front ("Spot Preemptible ...") or, for some GPUs, in the
    # middle ("... GPU attached to Spot Preemptible VMs running in ..."): usageType
    # decides which price it is, the rest names the resource.
    text = sku.get("description", "").lower()
    text = re.sub(r"^(spot )?preemptible ", "", text)
    text = text.replace(" attached to spot preemptible vms", "")
    if m := _MACHINE_SKU.match(text):
        key = (m["what"], m["family"])
    elif (m := _GPU_SKU.match(text)) and m["model"] in _GCP_BILLED_GPUS:
        key = ("gpu", _GCP_BILLED_GPUS[m["model"]])
    else:
        return
    price = _gcp_unit_price(sku)
    if price is None:
        return
    for region in sku.get("serviceRegions", []):
        rates[(*key, region, usage)] = price


def _gcp_unit_price(sku: dict[str, Any]) -> float | None:
    """The rate past any free tier: the last tier of the current pricing."""
    info = sku.get("pricingInfo") or []
    tiers = (info[0].get("pricingExpression", {}).get("tieredRates") or []) if info else []
    if not tiers:
        return None
    unit = tiers[-1].get("unitPrice", {})
    return int(unit.get("units") or 0) + int(unit.get("nanos") or 0) / 1e9


def _gcp_machine_price(
    rates: dict[tuple[str, str, str, str], float],
    family: str,
    region: str,
    cpus: float,
    memory: float,
    usage: str,
) -> float | None:
    core = rates.get(("core", family, region, usage))
    ram = rates.get(("ram", family, region, usage))
    return None if core is None or ram is None else cpus * core + memory * ram


def _gcp_region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _last(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# ---- Azure -------------------------------------------------------------------------------


def azure_csv(
    compute: Any,
    prices_get: JsonGet,
    regions: Sequence[str],
    *,
    now: datetime,
    prices_url: str = AZURE_PRICES_URL,
    cpu_sizes: Collection[str] = AZURE_CPU_SIZES,
) -> str:
    """Azure's catalog for `regions`: one row per VM size per zone (one row with an empty
    zone where the region has none for it), GPU sizes and `cpu_sizes`.

    Sizes come from the resource SKUs (vCPUs, MemoryGB, GPUs; zones; a location or zone
    restricted for this subscription is left out), prices from the Retail Prices API:
    Linux consumption meters per hour, "Spot" meters the spot price, "Low Priority"
    ignored."""
    if not regions:
        raise ValueError("azure: no regions to refresh")
    rows: list[_Row] = []
    for region in regions:
        sizes = _azure_sizes(compute, region, cpu_sizes)
        prices = _azure_prices(prices_get, prices_url, region)
        for name, (accelerator, count, cpus, memory, zones) in sorted(sizes.items()):
            price, spot = prices.get((name, False)), prices.get((name, True))
            if price is None and spot is None:
                continue
            for zone in zones or [""]:
                rows.append(_Row(name, accelerator, count, cpus, memory, price, spot, region, zone))
    header = [
        "source: Azure Resource Manager Microsoft.Compute/skus (resource_skus.list per "
        "location: vCPUs, MemoryGB, GPUs, zones, restrictions); Azure Retail Prices API "
        "(serviceName 'Virtual Machines', priceType Consumption; Linux meters, Spot meters "
        "for SpotPrice)",
        f"read: {now.date().isoformat()}",
        f"scope: GPU sizes (Standard_NC*/ND*/NV* with a whole number of GPUs) plus "
        f"{_listed(cpu_sizes)}; regions {', '.join(regions)}; AvailabilityZone is the "
        "logical zone of this subscription, empty where the size has no zones there; "
        "sizes restricted for the subscription left out",
    ]
    return _csv(header, rows)


def _azure_sizes(
    compute: Any, region: str, cpu_sizes: Collection[str]
) -> dict[str, tuple[str | None, float, float, float, list[str]]]:
    """VM size → (accelerator, count, vCPUs, memory GiB, usable zones) in `region`."""
    out: dict[str, tuple[str | None, float, float, float, list[str]]] = {}
    with _calling("azure", f"resource_skus.list in {region}"):
        for sku in compute.resource_skus.list(filter=f"location eq '{region}'"):
            if (sku.resource_type or "").lower() != "virtualmachines" or not sku.name:
                continue
            caps = {c.name: c.value for c in sku.capabilities or []}
            accelerator = _azure_accelerator(sku.name)
            gpus = float(caps.get("GPUs") or 0)
            if accelerator is None and sku.name not in cpu_sizes:
                continue
            if accelerator is not None and gpus < 1:
                continue  # a fraction of a GPU: nothing a task can ask for
            zones, usable = _azure_zones(sku, region)
            if not usable:
                continue
            out[sku.name] = (
                accelerator,
                gpus if accelerator else 0.0,
                float(caps.get("vCPUs") or 0),
                float(caps.get("MemoryGB") or 0),
                zones,
            )
    return out


def _azure_zones(sku: Any, region: str) -> tuple[list[str], bool]:
    """(zones the subscription may use, whether the location is usable at all)."""
    zones: set[str] = set()
    located = False
    for info in sku.location_info or []:
        if (info.location or "").lower() == region.lower():
            located = True
            zones.update(info.zones or [])
    for restriction in sku.restrictions or []:
        where = restriction.restriction_info
        # restrictionInfo.locations, not `values`: the SDK's models name that field
        # `values` or `values_property` depending on the version.
        locations = (where.locations if where is not None else None) or []
        if not any(loc.lower() == region.lower() for loc in locations):
            continue
        kind = str(getattr(restriction.type, "value", restriction.type) or "").lower()
        if kind == "location":
            return [], False
        if kind == "zone" and where is not None:
            zones.difference_update(where.zones or [])
    return sorted(zones), located


def _azure_accelerator(size: str) -> str | None:
    short = size.removeprefix("Standard_")
    if not short.startswith("N"):
        return None
    for pattern, name in _AZURE_GPUS:
        if pattern.search(short):
            return name
    return None


def _azure_prices(get: JsonGet, base_url: str, region: str) -> dict[tuple[str, bool], float]:
    """(VM size, spot) → USD per hour for Linux in `region`; a primary meter's price over
    a meter shared from another region."""
    found: dict[tuple[str, bool], tuple[bool, float]] = {}
    flt = (
        "serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
        f"and armRegionName eq '{region}'"
    )
    url: str | None = f"{base_url}/api/retail/prices?" + urlencode(
        {"$filter": flt}, quote_via=quote, safe="$'"
    )
    with _calling("azure", f"retail prices for {region}"):
        while url:
            page = get(url)
            for item in page.get("Items", []):
                sku = item.get("skuName", "")
                if (
                    item.get("type") != "Consumption"
                    or item.get("unitOfMeasure") != "1 Hour"
                    or item.get("armRegionName", "").lower() != region.lower()
                    or "Windows" in item.get("productName", "")
                    or "Low Priority" in sku
                ):
                    continue
                key = (item["armSkuName"], "Spot" in sku)
                seen = (bool(item.get("isPrimaryMeterRegion", True)), float(item["retailPrice"]))
                have = found.get(key)
                if have is None or (seen[0], -seen[1]) > (have[0], -have[1]):
                    found[key] = seen
            url = page.get("NextPageLink")
    return {key: price for key, (_, price) in found.items()}


# ---- helpers -----------------------------------------------------------------------------


@contextlib.contextmanager
def _calling(cloud: str, call: str) -> Iterator[None]:
    """Any failure inside (the call, a page fetched lazily, an answer not of the shape
    expected) is a RefreshError naming the cloud and the call."""
    try:
        yield
    except RefreshError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RefreshError(cloud, call, f"{type(err).__name__}: {first}") from err


def _csv(header: list[str], rows: list[_Row]) -> str:
    out = io.StringIO()
    for line in header:
        out.write(f"# {line}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows.sort(key=lambda r: (r.instance_type, r.accelerator or "", r.accelerator_count,
                             r.region, r.zone))  # fmt: skip
    for row in rows:
        writer.writerow(row.cells())
    return out.getvalue()


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    text = f"{round(value, 6):.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _listed(names: Collection[str]) -> str:
    return " ".join(sorted(names)) if names else "no CPU-only types"
