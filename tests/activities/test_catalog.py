"""The shipped catalog and the optimizer over it: pure, no cloud."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skyloom.activities import catalog as cat

CATALOG = cat.load()


def test_every_cloud_ships_dated_data_with_gpus_and_cpu_families():
    for cloud in cat.CLOUDS:
        rows = CATALOG.of(cloud)
        assert rows, f"no {cloud} rows shipped"
        assert any(line.startswith("read: ") for line in CATALOG.about[cloud])
        assert any(line.startswith("source: ") for line in CATALOG.about[cloud])
    gpus = {(v.cloud, v.accelerator) for v in CATALOG.vms if v.accelerator}
    wanted = [("aws", "A100"), ("aws", "H100"), ("aws", "T4"), ("gcp", "A100"), ("gcp", "L4"),
              ("gcp", "T4"), ("azure", "A100"), ("azure", "T4")]  # fmt: skip
    for cloud, name in wanted:
        assert (cloud, name) in gpus, f"{cloud} has no {name}"


def test_default_node_is_skypilots_default_instance_type():
    # As SkyPilot: 8+ vCPUs, 4 GB per vCPU, from the default families; never a GPU.
    cheapest = {c: cat.offers(CATALOG, c, {}, 1)[0] for c in cat.CLOUDS}
    assert {c: o.instance_type for c, o in cheapest.items()} == {
        "aws": "m6i.2xlarge",
        "gcp": "n2-standard-8",
        "azure": "Standard_D8s_v5",
    }
    assert all(not o.accelerators for o in cheapest.values())
    # cpus alone keeps the 4 GB per vCPU (a compute-optimized 2 GB/vCPU type does not fit).
    azure = cat.offers(CATALOG, "azure", {"cpus": "8+"}, 1)[0]
    assert azure.instance_type == "Standard_D8s_v5"
    # Given memory, any family member with that much fits (r6i has 8 GB per vCPU).
    assert cat.offers(CATALOG, "aws", {"cpus": "4+", "memory": "32+"}, 1)[0].instance_type == (
        "r6i.xlarge"
    )
    # An instance type or accelerators are taken as asked, outside the default families.
    assert cat.offers(CATALOG, "aws", {"instance_type": "t3.large"}, 1)[0].instance_type == (
        "t3.large"
    )


def test_gcp_gpus_price_their_host_machine_too():
    a100 = cat.offers(CATALOG, "gcp", {"accelerators": {"A100": 8}}, 1)[0]
    assert a100.instance_type == "a2-highgpu-8g"
    t4 = cat.offers(CATALOG, "gcp", {"accelerators": {"T4": 1}}, 1)[0]
    assert t4.instance_type is not None and t4.instance_type.startswith("n1-")
    zone = t4.zone
    gpu = min(
        v.price or 0 for v in CATALOG.of("gcp")
        if v.accelerator == "T4" and v.accelerator_count == 1 and v.zone == zone
    )  # fmt: skip
    host = min(
        v.price or 0 for v in CATALOG.of("gcp")
        if v.instance_type == t4.instance_type and v.zone == zone
    )  # fmt: skip
    assert t4.price_per_hour == pytest.approx(gpu + host)
    # A CPU task never lands on a machine built for GPUs (priced without them).
    for o in cat.offers(CATALOG, "gcp", {"cpus": "4+"}, 1, limit=10_000):
        assert not o.instance_type.startswith(("a2-", "a3-", "g2-"))  # type: ignore[union-attr]


def test_bad_requirement_names_its_field():
    with pytest.raises(ValueError, match=r"^cpus:"):
        cat.offers(CATALOG, "aws", {"cpus": "lots"}, 1)


def test_a_refreshed_copy_wins_over_the_shipped_one(tmp_path: Path):
    (tmp_path / "aws.csv").write_text(
        "# source: test\n# read: 2026-11-01\n" + ",".join(cat.COLUMNS) + "\n"
        "x9.big,,,8,64,0.1,0.05,us-east-1,use1-az1\n"
    )
    catalog = cat.load(tmp_path)
    assert [v.instance_type for v in catalog.of("aws")] == ["x9.big"]
    assert catalog.of("gcp")  # the others still shipped
    (tmp_path / "aws.csv").write_text("InstanceType,Price\nx,1\n")
    with pytest.raises(cat.CatalogError, match=r"aws\.csv: missing columns"):
        cat.load(tmp_path)


# ---- invariants ---------------------------------------------------------------------------

_ACCS = sorted(
    {(v.cloud, v.accelerator, v.accelerator_count) for v in CATALOG.vms if v.accelerator}
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict, int]:
    cloud = draw(st.sampled_from(["*", *cat.CLOUDS]))
    res: dict = {}
    if draw(st.booleans()):
        choices = [a for a in _ACCS if cloud in ("*", a[0])]
        _, name, count = draw(st.sampled_from(choices))
        res["accelerators"] = {name: count}
    if draw(st.booleans()):
        n = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64]))
        res["cpus"] = f"{n}+" if draw(st.booleans()) else n
    if draw(st.booleans()):
        res["memory"] = f"{draw(st.sampled_from([4, 16, 32, 128, 512]))}+"
    if draw(st.booleans()):
        res["use_spot"] = True
    infra = cloud
    if cloud != "*" and draw(st.booleans()):
        infra = f"{cloud}/{draw(st.sampled_from(CATALOG.regions(cloud)))}"
    return infra, res, draw(st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(requests())
def test_every_offer_meets_every_requirement_cheapest_first(req: tuple[str, dict, int]):
    infra, res, nodes = req
    offers = cat.offers(CATALOG, infra, res, nodes, limit=10_000)
    prices = [o.price_per_hour for o in offers]
    assert prices == sorted(prices)
    places = [(o.infra, o.region, o.zone) for o in offers]
    assert len(places) == len(set(places)), "one offer per zone"
    cloud, _, region = infra.partition("/")
    need = cat.Need.of(infra, res)
    for o in offers:
        assert cloud == "*" or o.infra == cloud
        assert not region or o.region == region
        assert o.spot == bool(res.get("use_spot"))
        if need.accelerator:
            assert o.accelerators == {need.accelerator: need.accelerator_count}
        else:
            assert not o.accelerators
        if need.default_node:
            family = cat.DEFAULT_FAMILIES[o.infra]
            assert o.instance_type is not None and family.search(o.instance_type)
        if need.memory_per_cpu is not None:
            assert (o.memory_gb or 0) >= need.memory_per_cpu * (o.cpus or 0)
        if "cpus" in res:
            assert need.cpus is not None and need.cpus.fits(o.cpus or 0)
        if "memory" in res:
            assert need.memory is not None and need.memory.fits(o.memory_gb or 0)
        # The price is the catalog's, per node.
        rows = [
            v for v in CATALOG.of(o.infra)
            if v.instance_type == o.instance_type and v.region == o.region
            and (o.infra == "aws" or v.zone == o.zone)
        ]  # fmt: skip
        assert rows
        per_node = o.price_per_hour
        prices_here = [(v.spot_price if o.spot else v.price) or 0 for v in rows]
        assert per_node >= min(prices_here) - 1e-6
