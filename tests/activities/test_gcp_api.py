"""GCPAPI through the real google-cloud-compute SDK against the fake Compute REST API:
marks, listing, failover errors, spot preemption, stop/start, firewall rules, cleanup."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest
from google.auth.credentials import Credentials
from skyloom.activities.errors import ErrorKind, Where, kind_of, where_of
from skyloom.activities.models import NodeState
from skyloom.activities.providers.cloud_api import Instance, InstanceRequest
from skyloom.activities.providers.gcp import GCPAPI, instance_name, label_safe, owner_label
from temporalio.exceptions import ApplicationError

from tests.fakes.gcp_compute import FakeGCPCompute

PROJECT = "skyloom-test"
REGION = "us-central1"
ZONE = "us-central1-a"
OWNER = "My.cluster-1.1a2b3c4d"
GCP_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture
def fake() -> Iterator[FakeGCPCompute]:
    server = FakeGCPCompute(PROJECT)
    yield server
    server.close()


@pytest.fixture
def api(fake: FakeGCPCompute) -> GCPAPI:
    return GCPAPI(PROJECT, [REGION, "us-east1"], endpoint=fake.url)


def request(ranks: list[int], **kw: object) -> InstanceRequest:
    base = InstanceRequest(
        cluster="My.cluster-1",
        owner=OWNER,
        region=REGION,
        zone=ZONE,
        instance_type="n1-standard-4",
        ranks=ranks,
        ssh_user="skyloom",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake skyloom",
        workflow_id="cluster-My.cluster-1",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def loopback(ip: str | None) -> bool:
    return ip is not None and ipaddress.ip_address(ip).is_loopback


def failure(call, *args) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        call(*args)
    return info.value


def by_rank(nodes: list[Instance]) -> dict[int, Instance]:
    return {n.rank: n for n in nodes}


def test_create_then_find_by_owner_in_one_aggregated_list(api: GCPAPI, fake: FakeGCPCompute):
    created = api.create_instances(request([0, 1]))
    assert [(i.rank, i.state) for i in created] == [(0, NodeState.PENDING), (1, NodeState.PENDING)]
    assert all(GCP_NAME.fullmatch(i.id) for i in created)
    # Inserts return RUNNING operations: create waited on each with our own client.
    assert len(fake.calls("POST", r"/zones/us-central1-a/operations/[^/]+/wait$")) == 2

    fake.requests.clear()
    nodes = api.list_instances(REGION, OWNER)
    assert [c.path for c in fake.requests] == [
        f"/compute/v1/projects/{PROJECT}/aggregated/instances"
    ]
    assert owner_label(OWNER) in fake.requests[0].query["filter"]
    assert sorted(n.rank for n in nodes) == [0, 1]
    for node in nodes:
        assert node.state == NodeState.UP
        assert (node.cluster, node.owner, node.workflow_id) == (
            "My.cluster-1",
            OWNER,
            "cluster-My.cluster-1",
        )
        assert (node.region, node.zone, node.instance_type, node.spot) == (
            REGION,
            ZONE,
            "n1-standard-4",
            False,
        )
        assert loopback(node.private_ip) and loopback(node.public_ip)
        assert node.private_ip != node.public_ip
    assert {n.id for n in nodes} == {i.id for i in created}
    # All skyloom instances of the region, and none in another region.
    assert {n.owner for n in api.list_instances(REGION)} == {OWNER}
    assert api.list_instances("us-east1") == []


def test_marks_are_stored_exactly_in_metadata(api: GCPAPI, fake: FakeGCPCompute):
    (inst,) = api.create_instances(request([3]))
    stored = fake.instances[inst.id]
    metadata = {i["key"]: i["value"] for i in stored["metadata"]["items"]}
    assert metadata["skyloom-owner"] == OWNER
    assert metadata["skyloom-cluster"] == "My.cluster-1"
    assert metadata["skyloom-rank"] == "3"
    assert metadata["skyloom-workflow"] == "cluster-My.cluster-1"
    assert stored["labels"]["skyloom"] == "1"
    assert stored["labels"]["skyloom-owner"] == owner_label(OWNER)


def test_listing_follows_every_page(api: GCPAPI, fake: FakeGCPCompute):
    fake.page_size = 1
    api.create_instances(request([0, 1, 2]))
    fake.requests.clear()
    assert sorted(n.rank for n in api.list_instances(REGION, OWNER)) == [0, 1, 2]
    pages = fake.calls("GET", r"/aggregated/instances$")
    assert [c.query.get("pageToken") for c in pages] == [None, "1", "2"]


def test_create_makes_only_the_missing_rank(api: GCPAPI, fake: FakeGCPCompute):
    api.create_instances(request([0]))
    fake.requests.clear()
    (made,) = api.create_instances(request([1]))
    inserts = fake.calls("POST", r"/instances$")
    assert [c.body["name"] for c in inserts if c.body] == [made.id]
    assert sorted(n.rank for n in api.list_instances(REGION, OWNER)) == [0, 1]


def test_create_again_after_a_cut_off_call_makes_no_duplicate(api: GCPAPI, fake: FakeGCPCompute):
    api.create_instances(request([0, 1]))
    again = api.create_instances(request([1]))  # the insert gets 409: already made
    assert [i.rank for i in again] == [1]
    assert len(fake.instances) == 2


def test_exhausted_zone_is_no_capacity_with_the_place(api: GCPAPI, fake: FakeGCPCompute):
    fake.exhaust(ZONE)
    err = failure(api.create_instances, request([0]))
    assert kind_of(err) == ErrorKind.NO_CAPACITY
    assert err.non_retryable
    assert where_of(err) == Where(
        infra="gcp", region=REGION, zone=ZONE, instance_type="n1-standard-4"
    )
    # The insert itself was accepted: only the finished operation said so.
    assert fake.calls("POST", r"/operations/[^/]+/wait$")
    assert api.list_instances(REGION, OWNER) == []
    # The next zone of the region works.
    (inst,) = api.create_instances(request([0], zone="us-central1-b"))
    assert inst.zone == "us-central1-b"


@pytest.mark.parametrize("at_request", [False, True])
def test_quota_is_quota(api: GCPAPI, fake: FakeGCPCompute, at_request: bool):
    fake.quota(REGION, at_request=at_request)
    err = failure(api.create_instances, request([0]))
    assert kind_of(err) == ErrorKind.QUOTA
    assert where_of(err).region == REGION
    assert where_of(err).zone == ZONE
    assert "CPUS" in err.message


class StaticToken(Credentials):
    """A credential whose refresh always works, so a 401 reaches skyloom as GCP's
    answer (anonymous credentials fail earlier, in the SDK's refresh-and-retry)."""

    def refresh(self, request: object) -> None:
        self.token = "ya29.fake"


def test_denied_credentials(fake: FakeGCPCompute):
    api = GCPAPI(PROJECT, [REGION], credentials=StaticToken(), endpoint=fake.url)
    assert api.check().enabled
    fake.deny()
    result = api.check()
    assert (result.infra, result.enabled) == ("gcp", False)
    assert "authentication credential" in result.reason and "\n" not in result.reason
    assert kind_of(failure(api.create_instances, request([0]))) == ErrorKind.CREDENTIALS
    assert kind_of(failure(api.list_instances, REGION)) == ErrorKind.CREDENTIALS
    assert fake.instances == {}


def test_denied_anonymous_credentials(api: GCPAPI, fake: FakeGCPCompute):
    fake.deny()
    result = api.check()
    assert not result.enabled and result.reason.startswith("GCP credentials:")
    err = failure(api.create_instances, request([0]))
    assert kind_of(err) == ErrorKind.CREDENTIALS and err.non_retryable


def test_check_makes_one_cheap_call(api: GCPAPI, fake: FakeGCPCompute):
    result = api.check()
    assert (result.infra, result.enabled) == ("gcp", True)
    assert [(c.method, c.path, c.query) for c in fake.requests] == [
        ("GET", f"/compute/v1/projects/{PROJECT}/zones", {"maxResults": "1"})
    ]
    assert api.regions() == [REGION, "us-east1"]


def test_check_of_an_unknown_project_says_which(fake: FakeGCPCompute):
    result = GCPAPI("no-such-project", [REGION], endpoint=fake.url).check()
    assert not result.enabled and "'projects/no-such-project' was not found" in result.reason


def test_check_names_the_extra_when_the_sdk_is_missing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "google.cloud.compute_v1", None)
    result = GCPAPI(PROJECT, [REGION]).check()
    assert (result.enabled, result.reason) == (False, "pip install 'skyloom[gcp]'")


def test_module_imports_without_the_sdk():
    code = (
        "import sys\n"
        "for name in ('google.cloud', 'google.api_core', 'google.auth'):\n"
        "    sys.modules[name] = None\n"
        "from skyloom.activities.providers.gcp import GCPAPI\n"
        "print(GCPAPI('p', ['us-central1']).check().reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pip install 'skyloom[gcp]'"


def test_preempted_spot_is_preempted_and_stopped_one_is_stopped(api: GCPAPI, fake: FakeGCPCompute):
    other = "Other.cluster.99ffee00"
    (reclaimed,) = api.create_instances(request([0], spot=True))
    api.create_instances(request([0], spot=True, cluster="Other.cluster", owner=other))
    api.create_instances(request([0], cluster="ondemand", owner="ondemand.1"))

    fake.preempt(reclaimed.id)
    api.stop_instances(REGION, other)
    api.stop_instances(REGION, "ondemand.1")

    (mine,) = api.list_instances(REGION, OWNER)
    (theirs,) = api.list_instances(REGION, other)
    (plain,) = api.list_instances(REGION, "ondemand.1")
    assert (mine.state, mine.spot) == (NodeState.PREEMPTED, True)
    assert (theirs.state, theirs.spot) == (NodeState.STOPPED, True)
    assert (plain.state, plain.spot) == (NodeState.STOPPED, False)
    # A stopped instance has no ephemeral external address on GCP.
    assert mine.public_ip is None and loopback(mine.private_ip)


def test_stop_start_round_trip(api: GCPAPI, fake: FakeGCPCompute):
    api.create_instances(request([0, 1], spot=True))
    before = by_rank(api.list_instances(REGION, OWNER))

    api.stop_instances(REGION, OWNER)
    stopped = api.list_instances(REGION, OWNER)
    assert {n.state for n in stopped} == {NodeState.STOPPED}
    assert all(fake.instances[n.id]["labels"].get("skyloom-stopped") == "1" for n in stopped)
    api.stop_instances(REGION, OWNER)  # again: nothing to do, no error

    api.start_instances(REGION, OWNER)
    after = by_rank(api.list_instances(REGION, OWNER))
    assert {n.state for n in after.values()} == {NodeState.UP}
    assert all(loopback(n.public_ip) for n in after.values())
    assert after[0].private_ip == before[0].private_ip
    assert after[0].public_ip != before[0].public_ip  # ephemeral: a new one after start
    assert all("skyloom-stopped" not in fake.instances[n.id]["labels"] for n in after.values())

    # Unmarked again: a reclaim now is a preemption, not skyloom's stop.
    fake.preempt(after[1].id)
    assert by_rank(api.list_instances(REGION, OWNER))[1].state == NodeState.PREEMPTED


def test_start_in_an_exhausted_zone_is_no_capacity(api: GCPAPI, fake: FakeGCPCompute):
    api.create_instances(request([0]))
    api.stop_instances(REGION, OWNER)
    fake.exhaust(ZONE)
    err = failure(api.start_instances, REGION, OWNER)
    assert kind_of(err) == ErrorKind.NO_CAPACITY
    assert (where_of(err).zone, where_of(err).instance_type) == (ZONE, "n1-standard-4")
    assert api.list_instances(REGION, OWNER)[0].state == NodeState.STOPPED


def test_booting_instance_is_pending(api: GCPAPI, fake: FakeGCPCompute):
    fake.auto_boot = False
    (inst,) = api.create_instances(request([0]))
    assert api.list_instances(REGION, OWNER)[0].state == NodeState.PENDING
    fake.boot(inst.id)
    assert api.list_instances(REGION, OWNER)[0].state == NodeState.UP


def test_ports_make_one_firewall_rule_and_delete_removes_it(api: GCPAPI, fake: FakeGCPCompute):
    (first,) = api.create_instances(request([0], ports=["8080", "10000-10010"]))
    api.create_instances(request([1], ports=["8080", "10000-10010"]))
    assert len(fake.calls("POST", r"/global/firewalls$")) == 1
    (rule,) = fake.firewalls.values()
    tags = fake.instances[first.id]["tags"]["items"]
    assert rule["targetTags"] == tags == [f"skyloom-{owner_label(OWNER)}"]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["8080", "10000-10010"]}]
    assert rule["direction"] == "INGRESS" and rule["network"].endswith("/global/networks/default")
    # The insert of the rule was a global operation, waited on like the others.
    assert fake.calls("POST", r"/global/operations/[^/]+/wait$")

    api.delete_instances(REGION, OWNER)
    assert fake.firewalls == {}


def test_delete_removes_everything_of_the_owner_only(api: GCPAPI, fake: FakeGCPCompute):
    other = "Other.cluster.99ffee00"
    api.create_instances(request([0, 1], ports=["22"]))
    (kept,) = api.create_instances(
        request([0], cluster="Other.cluster", owner=other, ports=["9000"])
    )

    api.delete_instances(REGION, OWNER)
    assert list(fake.instances) == [kept.id]
    assert list(fake.firewalls) == [f"skyloom-{owner_label(other)}"]
    assert api.list_instances(REGION, OWNER) == []
    assert [n.owner for n in api.list_instances(REGION)] == [other]

    fake.requests.clear()
    api.delete_instances(REGION, OWNER)  # nothing left: a no-op that succeeds
    assert not fake.calls("DELETE", r"/instances/")
    assert list(fake.instances) == [kept.id]


def test_another_owner_is_never_listed_or_stopped(api: GCPAPI, fake: FakeGCPCompute):
    other = "my.cluster-1.1a2b3c4e"  # same cluster name, another uid
    api.create_instances(request([0]))
    api.create_instances(request([0], owner=other))
    assert [n.owner for n in api.list_instances(REGION, OWNER)] == [OWNER]
    api.stop_instances(REGION, OWNER)
    assert by_rank(api.list_instances(REGION, other))[0].state == NodeState.UP
    assert len({i["name"] for i in fake.instances.values()}) == 2


def test_insert_body_carries_gpus_spot_disk_and_labels(api: GCPAPI, fake: FakeGCPCompute):
    api.create_instances(
        request(
            [0],
            spot=True,
            accelerators={"T4": 2},
            disk_tier="high",
            disk_size_gb=100,
            labels={"Team": "ML.Infra", "cost-center": "A1", "skyloom-stopped": "1"},
        )
    )
    (insert,) = fake.calls("POST", r"/instances$")
    body = insert.body
    assert body is not None
    assert body["guestAccelerators"] == [
        {"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 2}
    ]
    assert body["scheduling"] == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "STOP",
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
    }
    (disk,) = body["disks"]
    assert disk["boot"] and disk["autoDelete"]
    assert disk["initializeParams"] == {
        "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
        "diskSizeGb": "100",  # int64 travels as a JSON string
        "diskType": f"zones/{ZONE}/diskTypes/pd-ssd",
    }
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/n1-standard-4"
    assert {
        "key": "ssh-keys",
        "value": "skyloom:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake skyloom",
    } in (body["metadata"]["items"])
    assert body["labels"] == {
        "team": "ml_infra",
        "cost-center": "a1",
        "skyloom": "1",
        "skyloom-owner": owner_label(OWNER),
    }
    (nic,) = body["networkInterfaces"]
    assert nic["network"] == "global/networks/default"
    assert nic["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    (node,) = api.list_instances(REGION, OWNER)
    assert node.spot and node.state == NodeState.UP


@pytest.mark.parametrize(
    ("tier", "disk_type"), [("low", "pd-standard"), (None, "pd-balanced"), ("best", "pd-ssd")]
)
def test_disk_tier(api: GCPAPI, fake: FakeGCPCompute, tier: str | None, disk_type: str):
    api.create_instances(request([0], disk_tier=tier))
    (insert,) = fake.calls("POST", r"/instances$")
    assert insert.body is not None
    assert insert.body["disks"][0]["initializeParams"]["diskType"].endswith("/" + disk_type)
    assert "scheduling" not in insert.body or "provisioningModel" not in insert.body["scheduling"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image_id": "projects/nobody/global/images/missing"}, "resources.image_id"),
        ({"instance_type": "n9-nonsense-4"}, "resources.instance_type"),
        ({"zone": None}, "resources.zone"),
        ({"zone": "europe-west4-a"}, "resources.zone"),
        ({"accelerators": {"TPU-X": 1}}, "resources.accelerators"),
        ({"disk_tier": "fastest"}, "resources.disk_tier"),
        ({"ports": ["http"]}, "resources.ports"),
        ({"ports": ["70000"]}, "resources.ports"),
    ],
)
def test_invalid_spec_names_the_field(
    api: GCPAPI, fake: FakeGCPCompute, change: dict[str, object], field: str
):
    err = failure(api.create_instances, request([0], **change))
    assert kind_of(err) == ErrorKind.INVALID_SPEC
    assert where_of(err).field == field
    assert err.non_retryable
    assert fake.instances == {}


def test_names_and_labels_follow_gcp_rules():
    names = {
        instance_name(cluster, owner, rank)
        for cluster in ("My.Cluster_1", "9lives", "x" * 80, "---", "Ünïcode.name")
        for owner in (f"{cluster}.1a2b3c4d", f"{cluster}.1a2b3c4e")
        for rank in (0, 1, 15)
    }
    assert len(names) == 5 * 2 * 3
    assert all(GCP_NAME.fullmatch(n) for n in names), names
    assert instance_name("My.Cluster_1", "o", 0).startswith("my-cluster-1-")
    labels = label_safe({"Team": "ML.Infra", "9x": "A" * 80, "ok_key": ""})
    assert labels == {"team": "ml_infra", "x9x": "a" * 63, "ok_key": ""}
