"""AWS instance calls through the real boto3 against moto's EC2 server over HTTP.

Capacity errors and spot interruptions are made inside moto's backend (its server runs in
this process), never by patching skyloom.
"""

from __future__ import annotations

from typing import Any

import pytest
from moto.ec2 import models as ec2_models
from moto.ec2.exceptions import EC2ClientError
from skyloom.activities.errors import ErrorKind, kind_of, where_of
from skyloom.activities.models import NodeState
from skyloom.activities.providers.aws import AWSAPI
from skyloom.activities.providers.cloud_api import InstanceRequest

from tests.fakes.moto_ec2 import IMAGE, REGION, backend, reclaim_spot

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3QOQ3Ts3E+5/hsWTo7QcQ0j5PPoPk5NwwbnmZr5C0Z skyloom"


def request(owner: str = "My.cluster-1.1a2b3c4d", **kw: Any) -> InstanceRequest:
    args: dict[str, Any] = {
        "cluster": "My.cluster-1",
        "owner": owner,
        "region": REGION,
        "zone": "us-east-1a",
        "instance_type": "m6i.2xlarge",
        "ranks": [0, 1],
        "ssh_user": "ubuntu",
        "ssh_public_key": KEY,
        "workflow_id": "cluster-My.cluster-1",
        "image_id": IMAGE,
        **kw,
    }
    return InstanceRequest(**args)


def test_create_then_find_by_owner_with_loopback_addresses(aws: AWSAPI):
    made = aws.create_instances(request(ports=["8080"], labels={"team": "ml"}))
    assert sorted(i.rank for i in made) == [0, 1]
    found = aws.list_instances(REGION, "My.cluster-1.1a2b3c4d")
    assert sorted(i.rank for i in found) == [0, 1]
    for inst in found:
        assert inst.cluster == "My.cluster-1" and inst.owner == "My.cluster-1.1a2b3c4d"
        assert inst.workflow_id == "cluster-My.cluster-1"
        assert inst.zone == "us-east-1a" and inst.instance_type == "m6i.2xlarge"
        assert inst.private_ip is not None and inst.private_ip.startswith("127.0.1.")
        assert inst.state in (NodeState.PENDING, NodeState.UP)
    ec2 = aws.ec2(REGION)
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "tag:skyloom-owner", "Values": ["My.cluster-1.1a2b3c4d"]}]
    )["SecurityGroups"]
    assert len(groups) == 1
    ports = {(p.get("FromPort"), p.get("ToPort")) for p in groups[0]["IpPermissions"]}
    assert (22, 22) in ports and (8080, 8080) in ports
    tags = ec2.describe_instances(InstanceIds=[made[0].id])["Reservations"][0]["Instances"][0]
    assert {"Key": "team", "Value": "ml"} in tags["Tags"]
    # Another owner's instances are never seen as ours.
    aws.create_instances(request(owner="other.99999999", ranks=[0]))
    assert len(aws.list_instances(REGION, "My.cluster-1.1a2b3c4d")) == 2
    assert len(aws.list_instances(REGION)) == 3


def test_spot_and_disk_tier_reach_ec2(aws: AWSAPI):
    made = aws.create_instances(request(spot=True, disk_tier="high", disk_size_gb=100, ranks=[0]))
    inst = backend().get_instance(made[0].id)
    assert inst.lifecycle == "spot"
    assert made[0].spot
    volumes = [d for _, d in inst.get_block_device_mapping]
    vol = backend().get_volume(volumes[0].volume_id)
    assert vol.size == 100 and vol.volume_type == "gp3"


def test_no_capacity_in_a_zone_is_typed_with_its_place(aws: AWSAPI, monkeypatch):
    real = ec2_models.EC2Backend.run_instances
    subnet_a = aws.ec2(REGION).describe_subnets(
        Filters=[{"Name": "cidr-block", "Values": ["127.0.1.0/24"]}]  # our VPC's, in 1a
    )["Subnets"][0]["SubnetId"]

    def run(self: Any, *a: Any, **kw: Any) -> Any:
        if subnet_a in repr(kw):
            raise EC2ClientError(
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient m6i.2xlarge capacity in us-east-1a.",
            )
        return real(self, *a, **kw)

    monkeypatch.setattr(ec2_models.EC2Backend, "run_instances", run)
    with pytest.raises(Exception) as info:
        aws.create_instances(request())
    assert kind_of(info.value) is ErrorKind.NO_CAPACITY
    where = where_of(info.value)
    assert (where.infra, where.region, where.zone, where.instance_type) == (
        "aws",
        REGION,
        "us-east-1a",
        "m6i.2xlarge",
    )
    # The next zone has room.
    assert len(aws.create_instances(request(zone="us-east-1b"))) == 2


def test_spot_quota_is_typed(aws: AWSAPI, monkeypatch):
    def run(self: Any, *a: Any, **kw: Any) -> Any:
        raise EC2ClientError("MaxSpotInstanceCountExceeded", "Max spot instance count exceeded")

    monkeypatch.setattr(ec2_models.EC2Backend, "run_instances", run)
    with pytest.raises(Exception) as info:
        aws.create_instances(request(spot=True))
    assert kind_of(info.value) is ErrorKind.QUOTA


def test_interrupted_spot_is_preempted_a_stopped_node_is_stopped(aws: AWSAPI):
    spot = aws.create_instances(request(owner="spot.00000001", spot=True, ranks=[0]))[0]
    plain = aws.create_instances(request(owner="plain.00000002", ranks=[0]))[0]
    reclaim_spot(spot.id)
    aws.stop_instances(REGION, "plain.00000002")
    assert [i.state for i in aws.list_instances(REGION, "spot.00000001")] == [NodeState.PREEMPTED]
    assert [i.state for i in aws.list_instances(REGION, "plain.00000002")] == [NodeState.STOPPED]
    aws.start_instances(REGION, "plain.00000002")
    assert [i.state for i in aws.list_instances(REGION, "plain.00000002")] == [NodeState.UP]
    assert aws.list_instances(REGION, "plain.00000002")[0].id == plain.id


def test_spot_nodes_cannot_be_stopped(aws: AWSAPI):
    aws.create_instances(request(spot=True, ranks=[0]))
    with pytest.raises(Exception) as info:
        aws.stop_instances(REGION, "My.cluster-1.1a2b3c4d")
    assert kind_of(info.value) is ErrorKind.NOT_SUPPORTED


def test_delete_leaves_nothing_and_is_idempotent(aws: AWSAPI):
    owner = "My.cluster-1.1a2b3c4d"
    aws.create_instances(request(ports=["9000-9010"]))
    other = aws.create_instances(request(owner="other.12345678", ranks=[0]))
    aws.delete_instances(REGION, owner)
    assert aws.list_instances(REGION, owner) == []
    ec2 = aws.ec2(REGION)
    left = ec2.describe_security_groups(Filters=[{"Name": "tag:skyloom-owner", "Values": [owner]}])[
        "SecurityGroups"
    ]
    assert left == []
    aws.delete_instances(REGION, owner)  # nothing left: no error
    assert [i.id for i in aws.list_instances(REGION, "other.12345678")] == [other[0].id]


def test_bad_image_names_the_field(aws: AWSAPI, monkeypatch):
    def run(self: Any, *a: Any, **kw: Any) -> Any:
        raise EC2ClientError("InvalidAMIID.NotFound", "The image id '[ami-0]' does not exist")

    monkeypatch.setattr(ec2_models.EC2Backend, "run_instances", run)
    with pytest.raises(Exception) as info:
        aws.create_instances(request(image_id="ami-00000000000000000"))
    assert kind_of(info.value) is ErrorKind.INVALID_SPEC
    assert where_of(info.value).field == "resources.image_id"


def test_check_says_whether_credentials_work(aws: AWSAPI, moto_url: str, monkeypatch):
    ok = aws.check()
    assert ok.enabled and ok.infra == "aws"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9")  # nothing listens
    broken = AWSAPI([REGION]).check()
    assert not broken.enabled and broken.reason
