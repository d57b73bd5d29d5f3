"""A cloud provider end to end without an engine: offers from a catalog, nodes made in
moto's EC2 (loopback addresses) and reached over SSH by one real sshd playing them all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from skyloom.activities import catalog as cat
from skyloom.activities.errors import ErrorKind, Where, kind_of, provider_error
from skyloom.activities.models import ClusterRef, NodeState, ProvisionInput
from skyloom.activities.providers.cloud import CloudProvider, ensure_key

from tests.fakes.moto_ec2 import IMAGE, REGION, reclaim_spot
from tests.sshd import SSHHosts, needs_sshd

# us-east-1a and -1b as moto names them (zone ids are what the catalog holds).
CATALOG_CSV = (
    ",".join(cat.COLUMNS)
    + "\n"
    + "\n".join(
        [
            "m6i.2xlarge,,,8,32,0.384,0.2,us-east-1,use1-az6",
            "m6i.2xlarge,,,8,32,0.384,0.1,us-east-1,use1-az1",
            "m6i.2xlarge,,,8,32,0.384,0.3,us-east-1,use1-az9",  # no such zone in the account
            "g5.xlarge,A10G,1,4,16,1.006,0.4,us-east-1,use1-az6",
        ]
    )
)


def provider(aws, home: Path, port: int, user: str) -> CloudProvider:
    rows, about = cat.parse("aws", CATALOG_CSV, "test")
    return CloudProvider(
        aws, home, ssh_user=user, ssh_port=port, use_internal_ips=True,
        catalog=cat.Catalog(tuple(rows), {"aws": about}),
    )  # fmt: skip


def test_offers_name_zones_as_the_account_does_cheapest_first(aws, tmp_path: Path):
    p = provider(aws, tmp_path, 22, "ubuntu")
    on_demand = p.offers("aws", {}, 2)
    # Same price: the catalog's zone id breaks the tie (use1-az1 is us-east-1b here).
    # Offers are priced per node.
    assert [(o.zone, o.price_per_hour) for o in on_demand] == [
        ("us-east-1b", 0.384),
        ("us-east-1a", 0.384),
    ]
    spot = p.offers("aws/us-east-1", {"use_spot": True}, 1)
    assert [o.zone for o in spot] == ["us-east-1b", "us-east-1a"]
    assert [o.zone for o in p.offers("aws/us-east-1/us-east-1a", {}, 1)] == ["us-east-1a"]
    assert p.offers("aws", {"accelerators": {"A10G": 1}}, 1)[0].instance_type == "g5.xlarge"
    with pytest.raises(Exception) as info:
        p.offers("aws/mars-1", {}, 1)
    assert kind_of(info.value) is ErrorKind.INVALID_SPEC


@needs_sshd
def test_launch_run_and_down_on_moto_over_ssh(aws, hosts: SSHHosts, tmp_path: Path):
    sshd = hosts.add_every_loopback()
    home = tmp_path / "home"
    p = provider(aws, home, sshd.port, hosts.user)
    hosts.authorize(ensure_key(p.key_file))
    offer = p.offers("aws", {}, 2)[0]
    req = ProvisionInput(
        cluster="train", infra="aws", num_nodes=2, owner="train.0badcafe",
        resources={"image_id": IMAGE}, offer=offer,
    )  # fmt: skip
    handle = p.create(req)
    assert handle.region == REGION and handle.zone == "us-east-1b"
    assert [n.rank for n in handle.nodes] == [0, 1]
    assert all(n.ip.startswith("127.0.2.") for n in handle.nodes)
    # Again (a retried activity): the same nodes, nothing new.
    again = p.create(req)
    assert [n.node_id for n in again.nodes] == [n.node_id for n in handle.nodes]
    assert len(aws.list_instances(REGION)) == 2
    assert p.describe(handle) == [NodeState.UP, NodeState.UP]
    for node in handle.nodes:
        out = p.runner(node).run("echo rank-ok $(whoami)").check("echo")
        assert out.stdout.strip() == f"rank-ok {hosts.user}"
    p.terminate(ClusterRef(cluster="train", infra=handle.infra, handle=handle, owner=req.owner))
    assert aws.list_instances(REGION) == []
    assert p.describe(handle) == [NodeState.GONE, NodeState.GONE]
    # Terminating what is gone, knowing only the owner (a crash before the handle).
    p.terminate(ClusterRef(cluster="train", infra="aws", owner=req.owner))
    p.close()


def test_sweep_reports_a_reclaimed_spot_node_to_its_workflow(aws, tmp_path: Path):
    p = provider(aws, tmp_path, 1, "ubuntu")  # no sshd: nothing to watch over SSH
    offer = p.offers("aws", {"use_spot": True}, 1)[0]
    req = ProvisionInput(
        cluster="spotty", infra="aws", num_nodes=1, owner="spotty.12345678",
        resources={"image_id": IMAGE, "use_spot": True}, offer=offer,
    )  # fmt: skip
    handle = p.create(req)
    assert p.sweep("aws") == []
    # In an activity, create marks the node with its workflow; here the test does.
    aws.ec2(REGION).create_tags(
        Resources=[handle.nodes[0].node_id],
        Tags=[{"Key": "skyloom-workflow", "Value": "cluster-spotty"}],
    )
    reclaim_spot(handle.nodes[0].node_id)
    seen = p.sweep("aws")
    assert len(seen) == 1
    obs = seen[0].observation
    assert (obs.cluster, obs.rank, obs.state, obs.owner) == (
        "spotty",
        0,
        NodeState.PREEMPTED,
        "spotty.12345678",
    )
    assert seen[0].workflow_id == "cluster-spotty"
    p.close()


class HalfCloud:
    """A cloud that gives the first node asked for and runs out before the second."""

    def __init__(self, api) -> None:
        self.api = api

    def __getattr__(self, name: str):
        return getattr(self.api, name)

    def create_instances(self, req):
        made = self.api.create_instances(replace(req, ranks=req.ranks[:1]))
        if len(req.ranks) > 1:
            raise provider_error(
                ErrorKind.NO_CAPACITY, "InsufficientInstanceCapacity after one node",
                where=Where(infra="aws", region=req.region, zone=req.zone),
            )  # fmt: skip
        return made


def test_a_two_node_launch_that_got_one_node_is_no_capacity_and_leaves_nothing(aws, tmp_path: Path):
    p = provider(HalfCloud(aws), tmp_path, 1, "ubuntu")
    offer = p.offers("aws", {}, 2)[0]
    req = ProvisionInput(
        cluster="pair", infra=offer.where, num_nodes=2, owner="pair.0ddba11",
        resources={"image_id": IMAGE}, offer=offer,
    )  # fmt: skip
    with pytest.raises(Exception) as info:
        p.create(req)
    assert kind_of(info.value) is ErrorKind.NO_CAPACITY
    assert [i.rank for i in aws.list_instances(REGION, req.owner)] == [0]
    # What the launch path does before the next placement: the ref carries the offer's
    # place, so the cleanup needs no handle and no search of other regions.
    p.terminate(ClusterRef(cluster="pair", infra=offer.where, owner=req.owner))
    assert aws.list_instances(REGION) == []
    p.close()


def test_a_region_a_launch_just_used_is_swept_even_if_a_listing_missed_it(aws, tmp_path: Path):
    p = provider(aws, tmp_path, 1, "ubuntu")
    offer = p.offers("aws", {}, 1)[0]
    req = ProvisionInput(
        cluster="fresh", infra=offer.where, num_nodes=1, owner="fresh.5eed5eed",
        resources={"image_id": IMAGE}, offer=offer,
    )  # fmt: skip
    listed: list[str] = []
    real = aws.list_instances

    def listing(region: str, owner: str | None = None):
        found = real(region, owner)
        if owner is None:
            listed.append(region)
            if len(listed) == 1:
                p.create(req)  # made while the sweep's listing was on its way back
        return found

    aws.list_instances = listing  # type: ignore[method-assign]
    assert p.sweep("aws") == [] and listed == [REGION]
    # The next sweep still lists the region (it must not wait for the 5-minute full scan
    # to see the new node, or its phases' ends).
    p.sweep("aws")
    assert listed == [REGION, REGION]
    p.terminate(ClusterRef(cluster="fresh", infra=offer.where, owner=req.owner))
    p.close()


def test_a_node_created_without_an_address_gets_it_when_described(aws, tmp_path: Path):
    class NoAddressYet(HalfCloud):
        booted = False

        def create_instances(self, req):
            return [replace(i, private_ip=None) for i in self.api.create_instances(req)]

        def list_instances(self, region, owner=None):
            found = self.api.list_instances(region, owner)
            return found if self.booted else [replace(i, private_ip=None) for i in found]

    cloud = NoAddressYet(aws)
    p = provider(cloud, tmp_path, 1, "ubuntu")
    offer = p.offers("aws", {}, 1)[0]
    req = ProvisionInput(
        cluster="booting", infra=offer.where, num_nodes=1, owner="booting.b007b007",
        resources={"image_id": IMAGE}, offer=offer,
    )  # fmt: skip
    handle = p.create(req)
    assert handle.nodes[0].ip == "" and handle.nodes[0].state is NodeState.PENDING
    cloud.booted = True
    (node,) = p.describe_nodes(handle)
    assert node.ip.startswith("127.0.") and node.root.endswith(f"/{node.ip}_1")
    assert node.state is NodeState.PENDING  # nothing answers SSH on port 1
    p.terminate(ClusterRef(cluster="booting", infra=offer.where, owner=req.owner))
    (gone,) = p.describe_nodes(handle)
    assert gone.state is NodeState.GONE
    p.close()


def test_a_sweep_while_nodes_are_being_made_keeps_their_region(aws, tmp_path: Path):
    """Azure lists a VM only once its create is done: a sweep in between finds the region
    empty, and must not forget it once the nodes exist."""

    class SweptMidCreate(HalfCloud):
        def create_instances(self, req):
            assert p.sweep("aws") == []  # lists the region: nothing there yet
            return self.api.create_instances(req)

    cloud = SweptMidCreate(aws)
    p = provider(cloud, tmp_path, 1, "ubuntu")
    offer = p.offers("aws", {}, 1)[0]
    req = ProvisionInput(
        cluster="slow", infra=offer.where, num_nodes=1, owner="slow.5105105",
        resources={"image_id": IMAGE}, offer=offer,
    )  # fmt: skip
    p.create(req)
    listed: list[str] = []
    real = aws.list_instances

    def listing(region: str, owner: str | None = None):
        listed.append(region)
        return real(region, owner)

    aws.list_instances = listing  # type: ignore[method-assign]
    p.sweep("aws")
    assert listed == [REGION]
    p.terminate(ClusterRef(cluster="slow", infra=offer.where, owner=req.owner))
    p.close()


def test_one_sweep_lists_each_region_once_however_many_clusters(aws, tmp_path: Path):
    p = provider(aws, tmp_path, 1, "ubuntu")
    offer = p.offers("aws", {"use_spot": True}, 1)[0]
    owners = [f"c{i}.0000000{i}" for i in range(3)]
    for i, owner in enumerate(owners):
        p.create(
            ProvisionInput(
                cluster=f"c{i}",
                infra=offer.where,
                num_nodes=2,
                owner=owner,
                resources={"image_id": IMAGE, "use_spot": True},
                offer=offer,
            )
        )
    calls: list[tuple[str, str | None]] = []
    real = aws.list_instances

    def listing(region: str, owner: str | None = None):
        calls.append((region, owner))
        return real(region, owner)

    aws.list_instances = listing  # type: ignore[method-assign]
    p.sweep("aws")
    # Six spot nodes of three clusters: one listing of the region, never one per cluster.
    assert calls == [(REGION, None)]
    for i, owner in enumerate(owners):
        p.terminate(ClusterRef(cluster=f"c{i}", infra=offer.where, owner=owner))
    p.close()
