"""`skyloom catalog refresh`: each cloud's catalog rebuilt through its real SDK clients
over HTTP on loopback, from recorded API answers (tests/fakes/recorded/): moto's EC2 for
instance types, offerings and zones, recorded pages for everything moto lacks or makes
up (spot price history, the Price List), for GCP's compute and billing APIs, and for
Azure's resource SKUs and retail prices. Expected values are worked out from those
recordings; the result must parse, and the optimizer must place tasks on it."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from skyloom.activities import catalog as cat
from skyloom.activities.catalog import refresh as rf

RECORDED = Path(__file__).resolve().parent.parent / "fakes" / "recorded"
NOW = datetime(2026, 11, 24, 6, 30, tzinfo=UTC)
PROJECT = "skyloom-test"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


def recorded(cloud: str, name: str) -> str | None:
    path = RECORDED / cloud / name
    return path.read_text() if path.exists() else None


def by_key(vms: list[cat.VM]) -> dict[tuple[str, str | None, float, str, str | None], cat.VM]:
    out = {(v.instance_type, v.accelerator, v.accelerator_count, v.region, v.zone): v for v in vms}
    assert len(out) == len(vms), "one row per type, accelerator count and zone"
    return out


def vm(cloud: str, *fields: Any) -> cat.VM:
    """A row as the catalog reads it: type, accelerator, count, vCPUs, GiB, price, spot
    price, region, zone."""
    return cat.VM(cloud, *fields)


def assert_row(rows: dict[Any, cat.VM], want: cat.VM) -> None:
    key = (want.instance_type, want.accelerator, want.accelerator_count, want.region, want.zone)
    got = rows[key]
    for name in ("vcpus", "memory_gb", "price", "spot_price"):
        have, expected = getattr(got, name), getattr(want, name)
        if expected is None:
            assert have is None, f"{want.instance_type} {name}: {have}"
        else:
            assert have == pytest.approx(expected, abs=1e-6), f"{want.instance_type} {name}"


def header(text: str) -> dict[str, str]:
    lines = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    return dict(line.split(": ", 1) for line in lines)


# ---- a loopback server answering from recordings ----------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]


Answer = tuple[int, str]  # status, JSON body


@dataclass
class Recorded:
    """Serves `route(call) -> (status, body)` on 127.0.0.1; `fail` maps a path to the
    error answer it gets instead; `calls` is what was asked, in order."""

    route: Callable[[Call, str], Answer]
    fail: dict[str, Answer] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                call = Call("GET", parts.path, query)
                fake.calls.append(call)
                status, body = fake.fail.get(parts.path) or fake.route(call, fake.url)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def not_found(what: str) -> Answer:
    return 404, json.dumps({"error": {"code": 404, "message": f"no recording for {what}"}})


# ---- AWS ----------------------------------------------------------------------------------


class FakeAWS:
    """moto's EC2 server, in this process, for what moto models from AWS's own data
    (DescribeInstanceTypes, DescribeInstanceTypeOfferings, DescribeAvailabilityZones);
    recorded answers for DescribeSpotPriceHistory (moto's prices are all 0.00001) and the
    Price List's GetProducts (moto has no pricing service). A region without recordings
    answers empty pages. `fail[(action, region)]` answers with an AWS error instead."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.moto = DomainDispatcherApplication(create_backend_app)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=MotoRequestHandler
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        region = scope.group(1) if scope else ""
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:  # JSON protocol: the Price List
            action, params = target.rsplit(".", 1)[-1], json.loads(body or b"{}")
        else:  # EC2's query protocol
            form = parse_qs(body.decode())
            action, params = form.get("Action", [""])[0], {k: v[0] for k, v in form.items()}
        self.calls.append((action, region, params))
        answer: tuple[int, str, str] | None = self.fail.get((action, region))
        if answer is None and action == "DescribeSpotPriceHistory":
            page = 2 if params.get("NextToken") else 1
            xml = recorded("aws", f"{action}.{region}.{page}.xml") or _EMPTY_SPOT
            answer = (200, "text/xml", xml)
        elif answer is None and action == "GetProducts":
            where = {f["Field"]: f["Value"] for f in params.get("Filters", [])}
            page = 2 if params.get("NextToken") else 1
            text = recorded("aws", f"{action}.{where.get('regionCode')}.{page}.json")
            text = text or json.dumps({"FormatVersion": "aws_v1", "PriceList": []})
            answer = (200, "application/x-amz-json-1.1", text)
        if answer is None:
            return self.moto(environ, start_response)
        status, ctype, text = answer
        start_response(f"{status} X", [("Content-Type", ctype)])
        return [text.encode()]


_EMPTY_SPOT = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>0d6b1a5e-empty</requestId><spotPriceHistorySet/><nextToken/>
</DescribeSpotPriceHistoryResponse>"""
_EC2_DENIED = (
    403,
    "text/xml",
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
    "<Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this "
    "operation. User: arn:aws:iam::123456789012:user/catalog is not authorized to perform: "
    "ec2:DescribeSpotPriceHistory</Message></Error></Errors>"
    "<RequestID>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestID></Response>",
)


@pytest.fixture(scope="module")
def fake_aws() -> Iterator[FakeAWS]:
    fake = FakeAWS()
    yield fake
    fake.close()


def aws_source(fake: FakeAWS, *regions: str) -> rf.AWSSource:
    """Real boto3 clients pointed at the fake."""
    import boto3

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing")

    def ec2(region: str) -> Any:
        return session.client("ec2", region_name=region, endpoint_url=fake.url)

    pricing = session.client("pricing", region_name="us-east-1", endpoint_url=fake.url)
    return rf.AWSSource(ec2=ec2, pricing=pricing, regions=regions)


@dataclass(frozen=True)
class Refreshed:
    summary: rf.Summary
    text: str
    calls: list[tuple[str, str, dict[str, Any]]]


@pytest.fixture(scope="module")
def aws_refreshed(fake_aws: FakeAWS, tmp_path_factory: pytest.TempPathFactory) -> Refreshed:
    """One refresh of us-east-1 and us-west-2, read by several tests (describing moto's
    whole instance-type list takes seconds)."""
    dest = tmp_path_factory.mktemp("home") / "catalog"
    fake_aws.calls.clear()
    source = aws_source(fake_aws, "us-east-1", "us-west-2")
    summary = rf.refresh("aws", dest, source, now=NOW)
    return Refreshed(summary, summary.path.read_text(), list(fake_aws.calls))


def test_aws_rows_come_from_ec2_the_price_list_and_spot_history(aws_refreshed: Refreshed) -> None:
    text = aws_refreshed.text
    rows, about = cat.parse("aws", text, "aws.csv")
    got = by_key(rows)
    p4d = ("p4d.24xlarge", "A100", 8, 96, 1152)
    # Spot: the latest price per type and zone, zone names (us-east-1a) as zone IDs.
    assert_row(got, vm("aws", *p4d, 21.957642, 5.0933, "us-east-1", "use1-az6"))
    assert_row(got, vm("aws", *p4d, 21.957642, None, "us-east-1", "use1-az4"))
    assert_row(got, vm("aws", *p4d, 21.957642, 4.4, "us-west-2", "usw2-az1"))
    assert_row(got, vm("aws", "m6i.large", None, 0, 2, 8, 0.096, 0.033, "us-east-1", "use1-az1"))
    assert_row(got, vm("aws", "m6i.large", None, 0, 2, 8, 0.096, 0.0401, "us-west-2", "usw2-az2"))
    # Accelerators from NeuronInfo and a fraction of a GPU (GpuPartitionSize).
    inf2 = vm("aws", "inf2.xlarge", "Inferentia2", 1, 4, 16, 0.7582, None, "us-east-1", "use1-az2")
    assert_row(got, inf2)
    trn1 = vm("aws", "trn1.2xlarge", "Trainium", 1, 8, 32, 1.34375, 0.3409, "us-east-1", "use1-az5")
    assert_row(got, trn1)
    g6f = vm("aws", "g6f.large", "L4", 0.125, 2, 8, 0.2055, 0.0813, "us-east-1", "use1-az6")
    assert_row(got, g6f)
    # Zones are what DescribeInstanceTypeOfferings says (moto's copy of AWS's data).
    assert sorted(v.zone or "" for v in rows if v.instance_type == "p4d.24xlarge") == [
        "use1-az1", "use1-az2", "use1-az4", "use1-az6",
        "usw2-az1", "usw2-az2", "usw2-az3", "usw2-az4",
    ]  # fmt: skip
    types = {v.instance_type for v in rows}
    # Out of scope though priced (t3.nano); in scope but priced nowhere (p5, m6i.4xlarge).
    assert types == {"m6i.large", "m6i.2xlarge", "p4d.24xlarge", "g5.xlarge", "inf2.xlarge",
                     "trn1.2xlarge", "g6f.large"}  # fmt: skip
    assert not [v for v in rows if v.instance_type == "m6i.2xlarge" and v.region == "us-west-2"]
    assert len(rows) == 40
    info = header(text)
    assert info["read"] == "2026-11-24"
    assert "DescribeInstanceTypeOfferings" in info["source"] and "Price List" in info["source"]
    assert info["scope"].endswith("regions us-east-1, us-west-2; types with neither an "
                                  "on-demand nor a spot price left out")  # fmt: skip
    assert about == [f"{k}: {v}" for k, v in info.items()]


def test_aws_asks_for_linux_prices_and_describes_each_type_once(aws_refreshed: Refreshed) -> None:
    calls = aws_refreshed.calls
    asked = [p for action, _, p in calls if action == "GetProducts"]
    assert len(asked) == 3  # two pages in us-east-1, one in us-west-2
    wanted = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
              "capacitystatus": "Used"}  # fmt: skip
    for params in asked:
        assert params["ServiceCode"] == "AmazonEC2"
        assert wanted.items() <= {f["Field"]: f["Value"] for f in params["Filters"]}.items()
    spot = [p for action, _, p in calls if action == "DescribeSpotPriceHistory"]
    assert [p.get("NextToken") for p in spot] == [None, "a1b2c3d4-next", None]
    assert all(p["ProductDescription.1"] == "Linux/UNIX" for p in spot)
    offerings = [p for action, _, p in calls if action == "DescribeInstanceTypeOfferings"]
    assert all(p["LocationType"] == "availability-zone-id" for p in offerings)
    described: dict[str, list[str]] = {}
    for action, region, params in calls:
        if action == "DescribeInstanceTypes":
            names = [v for k, v in params.items() if k.startswith("InstanceType.")]
            assert len(names) <= 100
            described.setdefault(region, []).extend(names)
    everywhere = described["us-east-1"] + described["us-west-2"]
    assert len(everywhere) == len(set(everywhere)), "a type described twice"
    assert "p4d.24xlarge" in described["us-east-1"]


def test_aws_refresh_writes_a_catalog_the_optimizer_places_on(aws_refreshed: Refreshed) -> None:
    summary = aws_refreshed.summary
    dest = summary.path.parent
    assert summary == rf.Summary("aws", dest / "aws.csv", 40, ["us-east-1", "us-west-2"])
    assert [p.name for p in dest.iterdir()] == ["aws.csv"], "no temporary file left"
    catalog = cat.load(dest)
    assert any(line == "read: 2026-11-24" for line in catalog.about["aws"])
    best = cat.offers(catalog, "aws", {"accelerators": {"A100": 8}, "use_spot": True}, 2)[0]
    assert (best.instance_type, best.region, best.zone) == ("p4d.24xlarge", "us-west-2", "usw2-az1")
    assert best.price_per_hour == pytest.approx(4.4)  # per node
    default = cat.offers(catalog, "aws", {}, 1)[0]  # 8+ vCPUs, 32+ GB, no GPU
    assert (default.instance_type, default.price_per_hour) == ("m6i.2xlarge", 0.384)


def test_aws_failing_midway_names_the_call_and_keeps_the_old_file(
    fake_aws: FakeAWS, tmp_path: Path
) -> None:
    old = "# source: before\n# read: 2026-01-01\n" + ",".join(cat.COLUMNS) + "\n"
    (tmp_path / "aws.csv").write_text(old)
    fake_aws.calls.clear()
    fake_aws.fail[("DescribeSpotPriceHistory", "us-west-2")] = _EC2_DENIED
    try:
        with pytest.raises(rf.RefreshError) as caught:
            rf.refresh("aws", tmp_path, aws_source(fake_aws, "us-east-1", "us-west-2"), now=NOW)
    finally:
        fake_aws.fail.clear()
    err = caught.value
    assert (err.cloud, err.call) == ("aws", "ec2.DescribeSpotPriceHistory in us-west-2")
    assert "UnauthorizedOperation" in str(err)
    assert any(a == "GetProducts" and r == "us-east-1" for a, r, _ in fake_aws.calls)  # midway
    assert (tmp_path / "aws.csv").read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["aws.csv"]
    with pytest.raises(ValueError, match="cannot refresh gcp"):
        rf.refresh("gcp", tmp_path, aws_source(fake_aws, "us-east-1"), now=NOW)


# ---- GCP ----------------------------------------------------------------------------------


def gcp_route(call: Call, base: str) -> Answer:
    compute = f"/compute/v1/projects/{PROJECT}/aggregated/"
    page = 2 if call.query.get("pageToken") else 1
    if call.path == compute + "machineTypes":
        text = recorded("gcp", f"machineTypes.{page}.json")
    elif call.path == compute + "acceleratorTypes":
        text = recorded("gcp", "acceleratorTypes.json")
    elif call.path == f"/v1/services/{rf.GCP_COMPUTE_SERVICE}/skus":
        text = recorded("gcp", f"skus.{page}.json")
    else:
        text = None
    return (200, text) if text is not None else not_found(call.path)


@pytest.fixture
def fake_gcp() -> Iterator[Recorded]:
    fake = Recorded(gcp_route)
    yield fake
    fake.close()


@pytest.fixture
def gcp(fake_gcp: Recorded) -> rf.GCPSource:
    """The real compute_v1 clients and a requests session (what AuthorizedSession is)
    pointed at the fake."""
    import requests
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    options: dict[str, Any] = {
        "client_options": ClientOptions(api_endpoint=fake_gcp.url),
        "credentials": AnonymousCredentials(),
    }
    return rf.GCPSource(
        project=PROJECT,
        machine_types=compute_v1.MachineTypesClient(**options),
        accelerator_types=compute_v1.AcceleratorTypesClient(**options),
        billing_get=rf.session_get(requests.Session()),
        billing_url=fake_gcp.url,
    )


# The recorded billing rates (USD per vCPU-hour, per GiB-hour, per GPU-hour).
N1_US, N1_US_SPOT = (0.031611, 0.004237), (0.00801, 0.00107)
N1_NL, N1_NL_SPOT = (0.034773, 0.004661), (0.0088, 0.00118)
A2_US, A2_US_SPOT = (0.031611, 0.004237), (0.012644, 0.001695)
A3_US, A3_US_SPOT = (0.02, 0.0028), (0.005, 0.0007)


def machine(rates: tuple[float, float], cpus: float, gib: float) -> float:
    return cpus * rates[0] + gib * rates[1]


def test_gcp_rows_price_machines_by_family_rates_and_gpus_apart(
    gcp: rf.GCPSource, fake_gcp: Recorded
) -> None:
    text = gcp.build(NOW)
    rows, _ = cat.parse("gcp", text, "gcp.csv")
    got = by_key(rows)
    us_a, us = "us-central1-a", "us-central1"
    n1 = ("n1-standard-8", None, 0, 8, 30)
    assert_row(got, vm("gcp", *n1, machine(N1_US, 8, 30), machine(N1_US_SPOT, 8, 30), us, us_a))
    nl = (machine(N1_NL, 8, 30), machine(N1_NL_SPOT, 8, 30), "europe-west4", "europe-west4-a")
    assert_row(got, vm("gcp", *n1, *nl))
    # GPU machine families are priced without their GPUs, as in the shipped file.
    a2 = (machine(A2_US, 12, 85), machine(A2_US_SPOT, 12, 85))
    assert_row(got, vm("gcp", "a2-highgpu-1g", None, 0, 12, 85, *a2, us, "us-central1-b"))
    a3 = (machine(A3_US, 208, 1872), machine(A3_US_SPOT, 208, 1872))
    assert_row(got, vm("gcp", "a3-highgpu-8g", None, 0, 208, 1872, *a3, us, us_a))
    # Attachable GPUs: empty InstanceType, the per-GPU rate times the count. An N1 GPU
    # comes in 1, 2, 4 up to maximumCardsPerInstance; one with its own machine family
    # only in the counts those machines carry in that zone.
    assert_row(got, vm("gcp", "", "T4", 4, 0, 0, 4 * 0.35, 4 * 0.14, us, us_a))
    assert_row(got, vm("gcp", "", "T4", 2, 0, 0, 2 * 0.41, 2 * 0.164, "europe-west4",
                       "europe-west4-a"))  # fmt: skip
    assert_row(got, vm("gcp", "", "A100", 2, 0, 0, 2 * 2.933908, 2 * 1.1472, us, us_a))
    assert_row(got, vm("gcp", "", "H100", 8, 0, 0, 8 * 11.06125, 8 * 2.253, us, us_a))
    assert_row(got, vm("gcp", "", "L4", 1, 0, 0, 0.61631, None, "europe-west4", "europe-west4-a"))
    gpus = sorted((v.zone or "", v.accelerator or "", v.accelerator_count)
                  for v in rows if not v.instance_type)  # fmt: skip
    # asia-east1-a has a T4 but no price there; nvidia-tesla-t4-vws is no catalog GPU.
    assert gpus == [
        ("europe-west4-a", "L4", 1), ("europe-west4-a", "T4", 1), ("europe-west4-a", "T4", 2),
        ("europe-west4-a", "T4", 4),
        ("us-central1-a", "A100", 1), ("us-central1-a", "A100", 2), ("us-central1-a", "H100", 8),
        ("us-central1-a", "L4", 1), ("us-central1-a", "L4", 2), ("us-central1-a", "T4", 1),
        ("us-central1-a", "T4", 2), ("us-central1-a", "T4", 4),
        ("us-central1-b", "A100", 1), ("us-central1-b", "T4", 1), ("us-central1-b", "T4", 2),
        ("us-central1-b", "T4", 4),
    ]  # fmt: skip
    machines = {(v.zone, v.instance_type) for v in rows if v.instance_type}
    assert (us_a, "e2-micro") not in machines  # not a size the catalog carries
    assert len(machines) == 16 and len(rows) == 32
    # Custom, commitment, workstation and license SKUs priced nothing.
    assert got[("n1-standard-4", None, 0, us, us_a)].price == pytest.approx(
        machine(N1_US, 4, 15), abs=1e-6
    )
    assert "families a2-*, a3-*, g2-*" in header(text)["scope"]
    # Two pages of each paged list, and the machine types filtered server-side.
    asked = [(c.path.rsplit("/", 1)[-1], c.query.get("pageToken")) for c in fake_gcp.calls]
    assert asked == [
        ("skus", None), ("skus", "ChYKFDZGODEtNTg0NC00NTZBLzFBNDQ"),
        ("machineTypes", None), ("machineTypes", "CkQI0L2b2oK7iQMQ"), ("acceleratorTypes", None),
    ]  # fmt: skip
    assert fake_gcp.calls[2].query["filter"] == 'name eq "(a2|a3|e2|g2|n1|n2)-.*"'
    assert fake_gcp.calls[0].query["currencyCode"] == "USD"


def test_gcp_refresh_places_a_gpu_on_its_cheapest_host(gcp: rf.GCPSource, tmp_path: Path) -> None:
    summary = rf.refresh("gcp", tmp_path, gcp, now=NOW)
    assert (summary.rows, summary.regions) == (32, ["europe-west4", "us-central1"])
    catalog = cat.load(tmp_path)
    t4 = cat.offers(catalog, "gcp", {"accelerators": {"T4": 1}}, 1)[0]
    assert (t4.instance_type, t4.zone, t4.accelerators) == ("n1-standard-4", "us-central1-a",
                                                            {"T4": 1})  # fmt: skip
    assert t4.price_per_hour == pytest.approx(0.35 + machine(N1_US, 4, 15), abs=1e-5)
    a100 = cat.offers(catalog, "gcp", {"accelerators": {"A100": 2}}, 1)[0]
    assert a100.instance_type == "a2-highgpu-2g"
    assert a100.price_per_hour == pytest.approx(machine(A2_US, 24, 170) + 2 * 2.933908, abs=1e-5)


def test_gcp_failing_midway_names_the_call_and_keeps_the_old_file(
    gcp: rf.GCPSource, fake_gcp: Recorded, tmp_path: Path
) -> None:
    (tmp_path / "gcp.csv").write_text("old")
    fake_gcp.fail[f"/compute/v1/projects/{PROJECT}/aggregated/acceleratorTypes"] = (
        403,
        json.dumps({"error": {"code": 403, "message": "Required 'compute.acceleratorTypes.list' "
                              "permission for 'projects/skyloom-test'",
                              "errors": [{"reason": "forbidden", "domain": "global"}],
                              "status": "PERMISSION_DENIED"}}),
    )  # fmt: skip
    with pytest.raises(rf.RefreshError) as caught:
        rf.refresh("gcp", tmp_path, gcp, now=NOW)
    assert (caught.value.cloud, caught.value.call) == (
        "gcp",
        "compute.acceleratorTypes.aggregatedList",
    )
    assert "compute.acceleratorTypes.list" in str(caught.value)
    assert (tmp_path / "gcp.csv").read_text() == "old"
    # The billing catalog failing names that call.
    fake_gcp.fail.clear()
    fake_gcp.fail[f"/v1/services/{rf.GCP_COMPUTE_SERVICE}/skus"] = (500, "{}")
    with pytest.raises(rf.RefreshError, match=r"^gcp: cloudbilling services/6F81-5844-456A/skus"):
        rf.refresh("gcp", tmp_path, gcp, now=NOW)
    assert [p.name for p in tmp_path.iterdir()] == ["gcp.csv"]


# ---- Azure --------------------------------------------------------------------------------


def azure_route(call: Call, base: str) -> Answer:
    flt = call.query.get("$filter", "")
    # A region without recordings has no sizes and no prices.
    if call.path == f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/skus":
        region = re.fullmatch(r"location eq '(\w+)'", flt)
        page = 2 if call.query.get("$skiptoken") else 1
        name = f"skus.{region.group(1)}.{page}.json" if region else ""
        text = (recorded("azure", name) or '{"value": []}') if region else None
    elif call.path == "/api/retail/prices":
        region = re.search(r"armRegionName eq '(\w+)'", flt)
        page = 2 if call.query.get("$skip") else 1
        name = f"prices.{region.group(1)}.{page}.json" if region else ""
        empty = '{"Items": [], "NextPageLink": null}'
        text = (recorded("azure", name) or empty) if region else None
    else:
        text = None
    if text is None:
        return not_found(f"{call.path} {flt}")
    # The recorded next-page links point at Azure; here they point back at the fake.
    text = text.replace("https://management.azure.com", base)
    return 200, text.replace("https://prices.azure.com:443", base)


@pytest.fixture
def fake_azure() -> Iterator[Recorded]:
    fake = Recorded(azure_route)
    yield fake
    fake.close()


@pytest.fixture
def azure(fake_azure: Recorded) -> Callable[..., rf.AzureSource]:
    """The real ComputeManagementClient pointed at the fake as providers/azure.py does
    for tests; retail prices through the production urllib getter."""
    from azure.mgmt.compute import ComputeManagementClient
    from skyloom.activities.providers.azure import _FixedToken, _plain_http_policy

    compute = ComputeManagementClient(
        _FixedToken(),
        SUBSCRIPTION,
        base_url=fake_azure.url,
        per_call_policies=[_plain_http_policy(fake_azure.url)],
    )

    def source(*regions: str) -> rf.AzureSource:
        return rf.AzureSource(
            compute=compute, prices_get=rf.urllib_get, regions=regions, prices_url=fake_azure.url
        )

    return source


def test_azure_rows_come_from_resource_skus_and_retail_prices(
    azure: Callable[..., rf.AzureSource], fake_azure: Recorded
) -> None:
    text = azure("eastus", "westus2").build(NOW)
    rows, _ = cat.parse("azure", text, "azure.csv")
    got = by_key(rows)
    a100 = ("Standard_NC24ads_A100_v4", "A100-80GB", 1, 24, 220, 3.673, 0.99171, "eastus")
    assert_row(got, vm("azure", *a100, "2"))
    assert_row(got, vm("azure", *a100, "3"))
    nd = ("Standard_ND96asr_v4", "A100", 8, 96, 900, 27.197, 9.51895, "eastus", "2")
    assert_row(got, vm("azure", *nd))
    # No zones for the size in the region: one row, AvailabilityZone empty.
    assert_row(got, vm("azure", "Standard_NC4as_T4_v3", "T4", 1, 4, 28, 0.526, 0.1052,
                       "eastus", None))  # fmt: skip
    # The primary meter's price (not the shared one's 0.4032); Windows and Low Priority
    # meters are no price of the Linux VM.
    d8 = ("Standard_D8s_v5", None, 0, 8, 32, 0.384)
    assert_row(got, vm("azure", *d8, 0.04224, "eastus", "1"))
    assert_row(got, vm("azure", *d8, 0.0499, "westus2", "3"))
    t4 = ("Standard_NC4as_T4_v3", "T4", 1, 4, 28, 0.526, None, "westus2", "1")
    assert_row(got, vm("azure", *t4))
    # Zone 3 of D2s_v5 and all of NC24ads_A100_v4 in westus2 are restricted for the
    # subscription; B2s is not a size the catalog carries; disks are no VMs.
    places = sorted((v.instance_type, v.region, v.zone or "") for v in rows)
    assert [p for p in places if p[0] == "Standard_D2s_v5"] == [
        ("Standard_D2s_v5", "eastus", "1"), ("Standard_D2s_v5", "eastus", "2")
    ]  # fmt: skip
    assert not [p for p in places if p[0] == "Standard_NC24ads_A100_v4" and p[1] == "westus2"]
    assert {v.instance_type for v in rows} == {"Standard_D2s_v5", "Standard_D8s_v5",
        "Standard_NC24ads_A100_v4", "Standard_NC4as_T4_v3", "Standard_ND96asr_v4"}  # fmt: skip
    assert len(rows) == 15
    # Paged through nextLink / NextPageLink; one region per query.
    asked = [(c.path.rsplit("/", 1)[-1], c.query.get("$filter", "")) for c in fake_azure.calls]
    assert [a for a, _ in asked] == ["skus", "skus", "prices", "prices", "skus", "prices"]
    assert asked[2][1] == (
        "serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
        "and armRegionName eq 'eastus'"
    )
    assert fake_azure.calls[1].query["api-version"] == "2021-07-01"


def test_azure_refresh_places_tasks_by_zone(
    azure: Callable[..., rf.AzureSource], tmp_path: Path
) -> None:
    summary = rf.refresh("azure", tmp_path, azure("eastus", "westus2"), now=NOW)
    assert (summary.rows, summary.regions) == (15, ["eastus", "westus2"])
    catalog = cat.load(tmp_path)
    a100 = cat.offers(catalog, "azure", {"accelerators": {"A100": 8}}, 1)
    assert [(o.instance_type, o.zone, o.price_per_hour) for o in a100] == [
        ("Standard_ND96asr_v4", "2", 27.197)
    ]
    t4 = cat.offers(catalog, "azure", {"accelerators": {"T4": 1}, "use_spot": True}, 1)
    assert [(o.region, o.zone, o.price_per_hour) for o in t4] == [("eastus", None, 0.1052)]
    cpu = cat.offers(catalog, "azure", {}, 1)[0]
    assert (cpu.instance_type, cpu.region, cpu.price_per_hour) == ("Standard_D8s_v5", "eastus",
                                                                   0.384)  # fmt: skip


def test_azure_failing_midway_names_the_call_and_keeps_the_old_file(
    azure: Callable[..., rf.AzureSource], fake_azure: Recorded, tmp_path: Path
) -> None:
    (tmp_path / "azure.csv").write_text("old")
    fake_azure.fail["/api/retail/prices"] = (500, '{"Error": "internal"}')
    with pytest.raises(rf.RefreshError) as caught:
        rf.refresh("azure", tmp_path, azure("eastus", "westus2"), now=NOW)
    assert (caught.value.cloud, caught.value.call) == ("azure", "retail prices for eastus")
    assert "HTTP Error 500" in str(caught.value)
    assert (tmp_path / "azure.csv").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["azure.csv"]


def test_a_refresh_with_nothing_priced_writes_nothing(
    azure: Callable[..., rf.AzureSource], tmp_path: Path
) -> None:
    with pytest.raises(rf.RefreshError) as caught:
        rf.refresh("azure", tmp_path / "catalog", azure("francecentral"), now=NOW)
    assert (caught.value.cloud, caught.value.call) == ("azure", "refresh")
    assert list(tmp_path.iterdir()) == []


# ---- production clients -------------------------------------------------------------------


def test_production_sources_build_the_real_clients() -> None:
    import boto3
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1
    from skyloom.activities.providers.azure import _FixedToken

    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="x")
    aws = rf.aws_source(["us-east-1", "eu-west-1"], session=session)
    assert aws.ec2("eu-west-1").meta.region_name == "eu-west-1"
    assert aws.ec2("eu-west-1") is aws.ec2("eu-west-1")
    assert aws.pricing.meta.region_name == "us-east-1"
    assert aws.pricing.meta.service_model.service_name == "pricing"
    gcp = rf.gcp_source("p", credentials=AnonymousCredentials())
    assert isinstance(gcp.machine_types, compute_v1.MachineTypesClient)
    assert isinstance(gcp.accelerator_types, compute_v1.AcceleratorTypesClient)
    assert gcp.billing_url == "https://cloudbilling.googleapis.com"
    azure = rf.azure_source(SUBSCRIPTION, ["eastus"], credential=_FixedToken())
    assert azure.prices_get is rf.urllib_get and azure.regions == ("eastus",)
    assert azure.prices_url == "https://prices.azure.com"


# ---- the worker's activity ----------------------------------------------------------------


class _RecordedCloud:
    """What the activity needs of a cloud provider: its name and an API with a source."""

    priced = True

    def __init__(self, name: str, source: Any) -> None:
        self.name = name
        self.api = self
        self._source = source

    def catalog_source(self) -> Any:
        if isinstance(self._source, Exception):
            raise self._source
        return self._source

    def close(self) -> None:
        pass


def test_the_worker_refreshes_its_catalog_and_plans_with_it_at_once(
    gcp: rf.GCPSource, fake_gcp: Recorded, tmp_path: Path
) -> None:
    from skyloom.activities.cluster import ClusterActivities, Providers
    from skyloom.activities.models import RefreshCatalogInput, ShowGpusInput
    from temporalio.testing import ActivityEnvironment

    store = cat.CatalogStore(tmp_path / "catalog")
    shipped_regions = store.get().regions("gcp")
    broken = rf.RefreshError("azure", "resource_skus.list", "AuthorizationFailed")
    providers = Providers(
        {"gcp": _RecordedCloud("gcp", gcp), "azure": _RecordedCloud("azure", broken)},  # type: ignore[dict-item]
        catalog=store,
    )
    acts = ClusterActivities(providers)
    env = ActivityEnvironment()
    report = env.run(acts.refresh_catalog, RefreshCatalogInput())
    by = {r.cloud: r for r in report.results}
    assert (by["gcp"].rows, by["gcp"].regions, by["gcp"].error) == (
        32,
        ["europe-west4", "us-central1"],
        None,
    )
    assert by["azure"].rows == 0 and "AuthorizationFailed" in (by["azure"].error or "")
    # The worker's next plan (and show-gpus) read the refreshed copy, no restart needed.
    assert len(shipped_regions) > 2 and store.get().regions("gcp") == [
        "europe-west4",
        "us-central1",
    ]
    rows = env.run(acts.show_gpus, ShowGpusInput(name="T4", count=1, infra="gcp")).rows
    assert [(r.infra, r.price_per_hour) for r in rows] == [("gcp/us-central1", 0.35)]
    # The failed cloud kept its shipped copy.
    assert store.get().regions("azure") == cat.load().regions("azure")
    # Asking for a cloud the worker has not enabled says why.
    with pytest.raises(Exception, match="not enabled on this worker"):
        env.run(acts.refresh_catalog, RefreshCatalogInput(clouds=["aws"]))
