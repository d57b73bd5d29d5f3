"""A task with no infra (`*`) goes to the cheapest enabled cloud, or to the local machine
when the worker has none; infras a worker cannot use say why; show-gpus reads the
worker's catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from skyloom.activities import catalog as cat
from skyloom.activities.cluster import ClusterActivities, Providers
from skyloom.activities.errors import ErrorKind, Where, kind_of, provider_error
from skyloom.activities.models import (
    Candidate,
    CheckInput,
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    Offer,
    PlanInput,
    ProvisionInput,
    ShowGpusInput,
)
from skyloom.activities.providers.base import Provider
from skyloom.activities.providers.local import LocalProvider
from skyloom.activities.runners import Runner
from temporalio.testing import ActivityEnvironment


class PricedCloud(Provider):
    """A cloud that offers fixed prices in fixed regions (what plan_launch sees)."""

    priced = True

    def __init__(self, name: str, prices: dict[str, float]) -> None:
        self.name = name
        self.prices = prices
        self.asked: list[str] = []

    def offers(self, infra: str, resources: dict[str, Any], num_nodes: int) -> list[Offer]:
        self.asked.append(infra)
        parts = infra.split("/")
        region = parts[1] if len(parts) > 1 else None
        if region is not None and region not in self.prices:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"{self.name} has no region {region!r}",
                where=Where(infra=infra, field="resources.infra"),
            )
        return [
            Offer(infra=self.name, region=r, zone=f"{r}a", instance_type="vm", price_per_hour=p)
            for r, p in sorted(self.prices.items(), key=lambda rp: rp[1])
            if region in (None, r)
        ]

    def create(self, req: ProvisionInput) -> ClusterHandle:
        raise AssertionError("plan only")

    def terminate(self, ref: ClusterRef) -> None:
        raise AssertionError("plan only")

    def runner(self, node: NodeInfo) -> Runner:
        raise AssertionError("plan only")


def plan(acts: ClusterActivities, infra: str, n: int = 1):
    inp = PlanInput(cluster="c", num_nodes=n, candidates=[Candidate(infra=infra)])
    (only,) = ActivityEnvironment().run(acts.plan_launch, inp).candidates
    return only


def test_no_infra_is_the_cheapest_enabled_cloud(tmp_path: Path):
    aws = PricedCloud("aws", {"us-east-1": 0.4, "eu-west-1": 0.5})
    gcp = PricedCloud("gcp", {"us-central1": 0.3})
    acts = ClusterActivities(Providers({"local": LocalProvider(tmp_path), "aws": aws, "gcp": gcp}))
    p = plan(acts, "*")
    assert [(o.infra, o.region, o.price_per_hour) for o in p.offers] == [
        ("gcp", "us-central1", 0.3),
        ("aws", "us-east-1", 0.4),
        ("aws", "eu-west-1", 0.5),
    ]
    # The local machine is free but never chosen over a cloud the worker has.
    assert all(o.infra != "local" for o in p.offers)
    # `*/region`: the clouds that have the region; the others are not an error.
    p = plan(acts, "*/eu-west-1")
    assert [(o.infra, o.region) for o in p.offers] == [("aws", "eu-west-1")]
    assert gcp.asked[-1] == "gcp/eu-west-1"
    # No cloud has it: refused, naming the field, with every cloud's reason.
    p = plan(acts, "*/mars-1")
    assert p.error_kind == ErrorKind.INVALID_SPEC.value and p.error_field == "resources.infra"
    assert "aws has no region 'mars-1'" in (p.error or "")
    assert "gcp has no region 'mars-1'" in (p.error or "")


def test_no_infra_without_clouds_is_the_local_machine(tmp_path: Path):
    acts = ClusterActivities(
        Providers({"local": LocalProvider(tmp_path)}, {"aws": "no AWS credentials found"})
    )
    p = plan(acts, "*")
    assert [o.infra for o in p.offers] == ["local"]
    # A region needs a cloud: said with why none is enabled.
    p = plan(acts, "*/us-east-1")
    assert p.error_kind == ErrorKind.INVALID_SPEC.value
    assert "no cloud is enabled" in (p.error or "") and "no AWS credentials" in (p.error or "")
    # The local machine's own limits still hold.
    p = plan(acts, "*", n=999)
    assert p.error_field == "num_nodes" and not p.offers


def test_a_disabled_infra_says_why_in_check_and_when_asked_for(tmp_path: Path):
    providers = Providers(
        {"local": LocalProvider(tmp_path)},
        {"gcp": "no GCP credentials found", "aws": "boto3 is not installed"},
    )
    acts = ClusterActivities(providers)
    report = ActivityEnvironment().run(acts.check_infra, CheckInput())
    by = {r.infra: r for r in report.results}
    assert by["local"].enabled
    assert (by["aws"].enabled, by["aws"].reason) == (False, "boto3 is not installed")
    assert (by["gcp"].enabled, by["gcp"].reason) == (False, "no GCP credentials found")
    with pytest.raises(Exception) as info:
        providers.get("gcp/us-central1")
    assert kind_of(info.value) is ErrorKind.INVALID_SPEC
    assert "not enabled on this worker: no GCP credentials found" in str(info.value)


def test_show_gpus_reads_the_workers_catalog(tmp_path: Path):
    rows, about = cat.parse(
        "aws",
        "# read: 2026-11-01\n"
        + ",".join(cat.COLUMNS)
        + "\np4d.24xlarge,A100,8,96,1152,32.77,5.09,us-east-1,use1-az1"
        + "\np4d.24xlarge,A100,8,96,1152,30.00,,us-west-2,usw2-az1"
        + "\np4d.24xlarge,A100,8,96,1152,31.00,4.50,us-west-2,usw2-az2"
        + "\ng4dn.xlarge,T4,1,4,16,0.526,0.17,us-east-1,use1-az1\n",
        "test",
    )
    store = cat.CatalogStore(fixed=cat.Catalog(tuple(rows), {"aws": about}))
    aws = PricedCloud("aws", {})
    acts = ClusterActivities(Providers({"aws": aws}, catalog=store))
    env = ActivityEnvironment()
    report = env.run(acts.show_gpus, ShowGpusInput(name="a100"))
    # The cheapest region, with its lowest on-demand and spot prices (of any zone).
    assert [(r.infra, r.price_per_hour, r.spot_price_per_hour) for r in report.rows] == [
        ("aws/us-west-2", 30.0, 4.5)
    ]
    assert report.rows[0].enabled and report.enabled == ["aws"]
    assert report.known == ["A100", "T4"] and report.about["aws"] == ["read: 2026-11-01"]
    every = env.run(acts.show_gpus, ShowGpusInput(name="A100", all_regions=True))
    assert [r.infra for r in every.rows] == ["aws/us-west-2", "aws/us-east-1"]
    assert env.run(acts.show_gpus, ShowGpusInput(name="A100", count=4)).rows == []
    for bad in ("lambda", "aws/mars-1", "aws/us-east-1/use1-az1"):
        with pytest.raises(Exception) as info:
            env.run(acts.show_gpus, ShowGpusInput(infra=bad))
        assert kind_of(info.value) is ErrorKind.INVALID_SPEC, bad


def test_a_provider_call_knows_the_workflow_it_works_for(tmp_path: Path):
    """Blocking provider calls run in a helper thread: still in the activity's context
    (a cloud tags its nodes with the workflow the watcher reports a preemption to)."""
    from temporalio import activity

    seen: list[str] = []

    class Recording(PricedCloud):
        def create(self, req: ProvisionInput) -> ClusterHandle:
            seen.append(activity.info().workflow_id)
            return ClusterHandle(cluster=req.cluster, infra=self.name, nodes=[])

    acts = ClusterActivities(Providers({"aws": Recording("aws", {})}))
    req = ProvisionInput(cluster="c", infra="aws", num_nodes=1, owner="c.1")
    ActivityEnvironment().run(acts.provision, req)
    assert seen == [ActivityEnvironment().info.workflow_id]
