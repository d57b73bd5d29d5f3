"""moto's EC2 server for tests: served over HTTP in this process, so a test can reach into
its backend to make what a cloud does on its own (no capacity, a spot reclaim)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REGION = "us-east-1"
IMAGE = "ami-785db401"  # one of moto's Ubuntu images
VPC_NAME = "skyloom-test"
ACCOUNT = "123456789012"  # moto's default


@contextmanager
def serve() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fresh_account(url: str) -> None:
    """Forget everything, then make a VPC named VPC_NAME in 127.0.0.0/16 with a subnet in
    us-east-1a (127.0.1.0/24) and -1b (127.0.2.0/24): instances get loopback addresses, so
    one sshd can play every one of them. boto3 must already point at url."""
    import boto3

    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).read()
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": VPC_NAME}])
    for i, zone in enumerate(("us-east-1a", "us-east-1b")):
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.0.{i + 1}.0/24", AvailabilityZone=zone)


def backend() -> Any:
    from moto.ec2 import models

    return models.ec2_backends[ACCOUNT][REGION]


def reclaim_spot(instance_id: str) -> None:
    """What AWS does to a spot instance it takes back."""
    from moto.ec2.models.instances import StateReason

    inst = backend().get_instance(instance_id)
    inst.terminate()
    inst.state_reason = StateReason(
        "Server.SpotInstanceTermination: Spot instance termination",
        "Server.SpotInstanceTermination",
    )
