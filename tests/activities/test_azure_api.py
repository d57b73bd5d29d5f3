"""AzureAPI through the real Azure SDK (clients, pipeline, LRO pollers) against the fake
ARM server in tests/fakes/azure_arm.py."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from skyloom.activities.errors import ErrorKind, kind_of, where_of
from skyloom.activities.models import NodeState
from skyloom.activities.providers.azure import STOPPED_TAG, AzureAPI
from skyloom.activities.providers.cloud_api import InstanceRequest
from temporalio.exceptions import ApplicationError

from tests.fakes.azure_arm import FakeARM

RG = "skyloom"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey skyloom"


@pytest.fixture
def fake() -> Iterator[FakeARM]:
    arm = FakeARM(resource_groups=(RG,)).start()
    yield arm
    arm.stop()


@pytest.fixture
def api(fake: FakeARM) -> AzureAPI:
    return AzureAPI(
        fake.subscription_id,
        RG,
        ["eastus", "westus2"],
        endpoint=fake.url,
        poll_seconds=0.01,
        wait_seconds=30,
    )


def request(**overrides: Any) -> InstanceRequest:
    base = InstanceRequest(
        cluster="Train.GPU-Cluster",
        owner="uid-aaaa",
        region="eastus",
        zone=None,
        instance_type="Standard_D2s_v5",
        ranks=[0, 1],
        ssh_user="sky",
        ssh_public_key=KEY,
        workflow_id="cluster-train",
    )
    return replace(base, **overrides)


def owned(resources: list[dict[str, Any]], owner: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["tags"].get("skyloom-owner") == owner]


def first_pages(fake: FakeARM, method: str, path_end: str) -> list[Any]:
    """Requests that start a listing (nextLink pages excluded) on a path ending so."""
    return [
        r
        for r in fake.requests
        if r.method == method and r.path.endswith(path_end) and "$skiptoken" not in r.query
    ]


def test_two_ranks_are_found_by_owner_with_loopback_addresses_and_exact_tags(
    api: AzureAPI, fake: FakeARM
) -> None:
    made = api.create_instances(request(labels={"team": "ml"}))
    assert sorted(i.rank for i in made) == [0, 1]

    fake.requests.clear()
    found = sorted(api.list_instances("eastus", owner="uid-aaaa"), key=lambda i: i.rank)

    assert [i.rank for i in found] == [0, 1]
    for inst in found:
        assert inst.state is NodeState.UP
        assert inst.cluster == "Train.GPU-Cluster" and inst.owner == "uid-aaaa"
        assert inst.workflow_id == "cluster-train"
        assert inst.instance_type == "Standard_D2s_v5" and inst.region == "eastus"
        assert inst.private_ip and inst.private_ip.startswith("127.")
        assert inst.public_ip and inst.public_ip.startswith("127.")
        assert re.fullmatch(r"[a-z0-9-]{1,64}", inst.id) and not inst.id.endswith("-")
    assert len({i.id for i in found}) == 2
    assert len({i.private_ip for i in found}) == len({i.public_ip for i in found}) == 2
    # One listing each, whatever the number of VMs: never one call per VM.
    assert (
        len(
            first_pages(
                fake, "GET", f"/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines"
            )
        )
        == 1
    )
    assert len(first_pages(fake, "GET", "/providers/Microsoft.Compute/virtualMachines")) == 2
    assert len(first_pages(fake, "GET", "/networkInterfaces")) == 1
    assert len(first_pages(fake, "GET", "/publicIPAddresses")) == 1
    assert len(fake.requests) <= 5  # the two-VM listing fits a page; statusOnly may take two

    for rank, vm in enumerate(sorted(fake.vms(), key=lambda v: v["tags"]["skyloom-rank"])):
        expected = {
            "skyloom-owner": "uid-aaaa",
            "skyloom-cluster": "Train.GPU-Cluster",
            "skyloom-rank": str(rank),
            "skyloom-workflow": "cluster-train",
            "team": "ml",
        }
        assert vm["tags"] == expected
    for resource in fake.nics() + fake.public_ips():
        assert resource["tags"]["skyloom-owner"] == "uid-aaaa"
        assert resource["tags"]["skyloom-cluster"] == "Train.GPU-Cluster"
    assert owned(fake.nsgs(), "uid-aaaa")


def test_pollers_poll_the_fake_endpoint(api: AzureAPI, fake: FakeARM) -> None:
    api.create_instances(request(ranks=[0]))
    polls = [r for r in fake.requests if "/operations/" in r.path]
    # vnet, NSG, public IP, NIC, VM: each polled InProgress once, then Succeeded.
    assert len(polls) >= 10
    assert all(r.path.startswith("/subscriptions/") for r in polls)


def test_create_again_only_creates_the_missing_rank(api: AzureAPI, fake: FakeARM) -> None:
    api.create_instances(request(ranks=[0]))
    first = {vm["name"] for vm in fake.vms()}
    fake.requests.clear()

    api.create_instances(request(ranks=[1]))

    vm_puts = [
        r.path.rsplit("/", 1)[1]
        for r in fake.requests
        if r.method == "PUT" and "/virtualMachines/" in r.path
    ]
    assert len(vm_puts) == 1 and vm_puts[0] not in first
    assert sorted(i.rank for i in api.list_instances("eastus", "uid-aaaa")) == [0, 1]
    assert len(fake.vms()) == 2


@pytest.mark.parametrize(
    ("zone", "code"), [(None, "AllocationFailed"), ("2", "ZonalAllocationFailed")]
)
def test_exhausted_region_or_zone_is_no_capacity_with_the_place(
    api: AzureAPI, fake: FakeARM, zone: str | None, code: str
) -> None:
    fake.exhaust("eastus", zone)

    with pytest.raises(ApplicationError) as info:
        api.create_instances(request(zone=zone, instance_type="Standard_D4s_v5"))

    assert kind_of(info.value) is ErrorKind.NO_CAPACITY
    where = where_of(info.value)
    assert (where.infra, where.region, where.zone, where.instance_type) == (
        "azure",
        "eastus",
        zone,
        "Standard_D4s_v5",
    )
    assert code in str(info.value)
    # The failure came from the VM's async operation, not the PUT.
    failed = [r for r in fake.requests if r.method == "PUT" and "/virtualMachines/" in r.path]
    assert len(failed) == 2
    # The failed VMs and their zonal public IPs are gone, so another zone can be tried.
    assert fake.vms() == [] and fake.nics() == [] and fake.public_ips() == []
    assert api.list_instances("eastus", "uid-aaaa") == []


def test_another_zone_works_after_one_is_exhausted(api: AzureAPI, fake: FakeARM) -> None:
    fake.exhaust("eastus", "1")
    with pytest.raises(ApplicationError) as info:
        api.create_instances(request(zone="1"))
    assert kind_of(info.value) is ErrorKind.NO_CAPACITY

    made = api.create_instances(request(zone="3"))

    assert {i.zone for i in made} == {"3"}
    assert {i.zone for i in api.list_instances("eastus", "uid-aaaa")} == {"3"}
    assert all(vm["zones"] == ["3"] for vm in fake.vms())


def test_another_region_works_after_one_is_exhausted(api: AzureAPI, fake: FakeARM) -> None:
    fake.exhaust("eastus")
    with pytest.raises(ApplicationError) as info:
        api.create_instances(request())
    assert kind_of(info.value) is ErrorKind.NO_CAPACITY

    api.create_instances(request(region="westus2"))

    assert len(api.list_instances("westus2", "uid-aaaa")) == 2
    assert {vm["location"] for vm in fake.vms()} == {"westus2"}


def test_sku_not_available_is_no_capacity(api: AzureAPI, fake: FakeARM) -> None:
    fake.sku_not_available("Standard_NC24ads_A100_v4")

    with pytest.raises(ApplicationError) as info:
        api.create_instances(request(instance_type="Standard_NC24ads_A100_v4", zone="1"))

    assert kind_of(info.value) is ErrorKind.NO_CAPACITY
    assert where_of(info.value).instance_type == "Standard_NC24ads_A100_v4"
    assert where_of(info.value).zone == "1"
    assert fake.vms() == [] and fake.public_ips() == []


@pytest.mark.parametrize("code", ["OperationNotAllowed", "QuotaExceeded"])
def test_quota_is_quota(api: AzureAPI, fake: FakeARM, code: str) -> None:
    fake.quota("eastus", code)

    with pytest.raises(ApplicationError) as info:
        api.create_instances(request())

    assert kind_of(info.value) is ErrorKind.QUOTA
    assert where_of(info.value).region == "eastus"
    # Another region is not affected.
    assert len(api.create_instances(request(region="westus2"))) == 2


@pytest.mark.parametrize(
    ("status", "code"), [(401, "AuthenticationFailed"), (403, "AuthorizationFailed")]
)
def test_denied_disables_check_and_create_is_credentials(
    api: AzureAPI, fake: FakeARM, status: int, code: str
) -> None:
    fake.deny(status, code)

    result = api.check()
    assert result.infra == "azure" and result.enabled is False
    assert code in result.reason and "\n" not in result.reason

    with pytest.raises(ApplicationError) as info:
        api.create_instances(request())
    assert kind_of(info.value) is ErrorKind.CREDENTIALS
    assert where_of(info.value).infra == "azure"


def test_check_ok_and_missing_resource_group(api: AzureAPI, fake: FakeARM) -> None:
    assert api.check().enabled is True
    assert fake.requests[-1].path.endswith(
        f"/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines"
    )

    missing = AzureAPI(
        fake.subscription_id, "nope", ["eastus"], endpoint=fake.url, poll_seconds=0.01
    )
    result = missing.check()
    assert result.enabled is False
    assert "resource group nope does not exist" in result.reason
    assert "az group create -n nope -l eastus" in result.reason


def test_check_without_the_sdk_says_how_to_install(
    fake: FakeARM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module set to None in sys.modules fails to import, as if never installed.
    monkeypatch.setitem(sys.modules, "azure.mgmt.compute", None)
    api = AzureAPI(fake.subscription_id, RG, ["eastus"], endpoint=fake.url)

    result = api.check()

    assert result.enabled is False
    assert "pip install 'skyloom[azure]'" in result.reason
    assert fake.requests == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_id": "Canonical:no-such-offer:1:latest"}, "resources.image_id"),
        ({"image_id": "not-an-image"}, "resources.image_id"),
        ({"instance_type": "Standard_Typo_v9"}, "resources.instance_type"),
    ],
)
def test_bad_image_or_size_is_invalid_spec_naming_the_field(
    api: AzureAPI, overrides: dict[str, str], field: str
) -> None:
    with pytest.raises(ApplicationError) as info:
        api.create_instances(request(**overrides))

    assert kind_of(info.value) is ErrorKind.INVALID_SPEC
    assert where_of(info.value).field == field


def test_evicted_spot_is_preempted_while_a_stopped_one_is_stopped(
    api: AzureAPI, fake: FakeARM
) -> None:
    evicted = api.create_instances(request(owner="uid-evicted", ranks=[0], spot=True))[0]
    stopped = api.create_instances(request(owner="uid-stopped", ranks=[0], spot=True))[0]

    fake.evict(evicted.id)
    api.stop_instances("eastus", "uid-stopped")

    states = {i.owner: i.state for i in api.list_instances("eastus")}
    assert states == {"uid-evicted": NodeState.PREEMPTED, "uid-stopped": NodeState.STOPPED}
    assert fake.power_state(evicted.id) == fake.power_state(stopped.id) == "deallocated"


def test_stop_start_round_trip(api: AzureAPI, fake: FakeARM) -> None:
    api.create_instances(request(spot=True))

    api.stop_instances("eastus", "uid-aaaa")
    assert {i.state for i in api.list_instances("eastus", "uid-aaaa")} == {NodeState.STOPPED}
    assert all(fake.power_state(vm["name"]) == "deallocated" for vm in fake.vms())
    assert all(vm["tags"][STOPPED_TAG] == "true" for vm in fake.vms())

    api.start_instances("eastus", "uid-aaaa")
    assert {i.state for i in api.list_instances("eastus", "uid-aaaa")} == {NodeState.UP}
    assert all(STOPPED_TAG not in vm["tags"] for vm in fake.vms())
    assert all(vm["tags"]["skyloom-owner"] == "uid-aaaa" for vm in fake.vms())

    # Evicted after the restart: the stop mark is gone, so it reads as a preemption.
    fake.evict(fake.vms()[0]["name"])
    assert NodeState.PREEMPTED in {i.state for i in api.list_instances("eastus", "uid-aaaa")}


def test_ports_open_in_the_owner_nsg_and_the_nic_uses_it(api: AzureAPI, fake: FakeARM) -> None:
    api.create_instances(request(ports=["8080", "10000-10010"]))

    [nsg] = owned(fake.nsgs(), "uid-aaaa")
    opened = [
        port
        for rule in nsg["properties"]["securityRules"]
        if rule["properties"]["access"] == "Allow" and rule["properties"]["direction"] == "Inbound"
        for port in rule["properties"]["destinationPortRanges"]
    ]
    assert sorted(opened) == ["10000-10010", "22", "8080"]
    assert all(nic["properties"]["networkSecurityGroup"]["id"] == nsg["id"] for nic in fake.nics())


def everything(fake: FakeARM) -> set[str]:
    return {
        r["id"] for r in fake.vms() + fake.nics() + fake.public_ips() + fake.disks() + fake.nsgs()
    }


def test_delete_leaves_nothing_of_the_owner_and_twice_is_a_no_op(
    api: AzureAPI, fake: FakeARM
) -> None:
    api.create_instances(request(owner="uid-other", cluster="other", ranks=[0]))
    before = everything(fake)
    api.create_instances(request(ports=["8080"]))
    assert len(fake.disks()) == 3 and len(owned(fake.nsgs(), "uid-aaaa")) == 1

    api.delete_instances("eastus", "uid-aaaa")

    # Exactly the other owner's VM, NIC, public IP, (untagged) disk and NSG are left.
    assert everything(fake) == before and len(before) == 5
    assert api.list_instances("eastus", "uid-aaaa") == []
    assert [i.owner for i in api.list_instances("eastus")] == ["uid-other"]

    fake.requests.clear()
    api.delete_instances("eastus", "uid-aaaa")
    assert not [r for r in fake.requests if r.method == "DELETE"]


def test_delete_removes_what_a_cut_off_create_left(api: AzureAPI, fake: FakeARM) -> None:
    # A bad size fails the VM after its public IP and NIC were made: no VM to take them.
    with pytest.raises(ApplicationError):
        api.create_instances(request(instance_type="Standard_Typo_v9"))
    assert len(owned(fake.nics(), "uid-aaaa")) == 2 and fake.vms() == []

    api.delete_instances("eastus", "uid-aaaa")

    assert fake.nics() == [] and fake.public_ips() == [] and fake.nsgs() == []


def test_two_deletes_at_once_both_succeed(api: AzureAPI, fake: FakeARM) -> None:
    # A retried activity racing the first attempt: each finds things the other removes.
    api.create_instances(request(ranks=[0, 1, 2]))
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(api.delete_instances, "eastus", "uid-aaaa") for _ in range(2)]
        for run in runs:
            run.result()

    assert everything(fake) == set()


def test_other_owner_and_region_are_never_listed(api: AzureAPI, fake: FakeARM) -> None:
    api.create_instances(request(ranks=[0]))
    api.create_instances(request(owner="uid-west", region="westus2", ranks=[0]))

    assert [i.owner for i in api.list_instances("eastus")] == ["uid-aaaa"]
    assert [i.owner for i in api.list_instances("westus2")] == ["uid-west"]
    assert api.list_instances("eastus", owner="uid-west") == []

    api.delete_instances("eastus", "uid-west")
    assert [i.owner for i in api.list_instances("westus2")] == ["uid-west"]


@pytest.mark.parametrize(
    ("tier", "sku"),
    [
        ("low", "Standard_LRS"),
        (None, "StandardSSD_LRS"),
        ("medium", "StandardSSD_LRS"),
        ("best", "Premium_LRS"),
    ],
)
def test_vm_body_carries_spot_disk_tier_zone_image_and_key(
    api: AzureAPI, fake: FakeARM, tier: str | None, sku: str
) -> None:
    api.create_instances(request(ranks=[0], spot=True, zone="3", disk_tier=tier, disk_size_gb=512))

    [body] = fake.bodies("PUT", "virtualMachines")
    props = body["properties"]
    assert body["zones"] == ["3"]
    assert props["priority"] == "Spot" and props["evictionPolicy"] == "Deallocate"
    assert props["billingProfile"] == {"maxPrice": -1}
    os_disk = props["storageProfile"]["osDisk"]
    assert os_disk["managedDisk"]["storageAccountType"] == sku
    assert os_disk["diskSizeGB"] == 512 and os_disk["deleteOption"] == "Delete"
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-jammy",
        "sku": "22_04-lts-gen2",
        "version": "latest",
    }
    linux = props["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [
        {"path": "/home/sky/.ssh/authorized_keys", "keyData": KEY}
    ]
    assert "adminPassword" not in props["osProfile"]
    assert props["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"] == "Delete"
    [pip] = fake.bodies("PUT", "publicIPAddresses")
    assert pip["properties"]["deleteOption"] == "Delete" and pip["zones"] == ["3"]
    [disk] = fake.disks()
    assert disk["sku"]["name"] == sku and disk["zones"] == ["3"]


def test_on_demand_vm_body_has_no_spot_and_takes_an_image_urn(api: AzureAPI, fake: FakeARM) -> None:
    api.create_instances(
        request(ranks=[0], image_id="Canonical:ubuntu-24_04-lts:server:24.04.202501")
    )

    [body] = fake.bodies("PUT", "virtualMachines")
    assert "priority" not in body["properties"] and "zones" not in body
    assert body["properties"]["storageProfile"]["imageReference"]["version"] == "24.04.202501"


def test_plain_http_is_refused_to_a_non_loopback_endpoint() -> None:
    api = AzureAPI("sub", RG, ["eastus"], endpoint="http://10.1.2.3:8080")
    result = api.check()
    assert result.enabled is False and "loopback" in result.reason
