"""AWS instance calls with boto3 (the CloudAPI seam of cloud_api.py).

Credentials, region endpoints and `AWS_ENDPOINT_URL_EC2` come from boto3's own chain, as
for every boto3 program. EC2 has no idempotent create we can lean on (moto and some
partitions ignore ClientToken), so a node is found again only by its tags, which
`run_instances` writes atomically with the instance.
"""

from __future__ import annotations

import threading
from typing import Any

from skyloom.activities.errors import ErrorKind, Where, provider_error
from skyloom.activities.models import CheckResult, NodeState
from skyloom.activities.providers.cloud_api import (
    CLUSTER_TAG,
    OWNER_TAG,
    RANK_TAG,
    WORKFLOW_TAG,
    CloudAPI,
    Instance,
    InstanceRequest,
    digest,
)
from temporalio.exceptions import ApplicationError

CANONICAL = "099720109477"
UBUNTU_IMAGES = (
    "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
    "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
)
# Marks a stopped spot node as stopped by skyloom (any other stop of a spot node is AWS
# reclaiming it).
STOPPED_TAG = "skyloom-stopped"
_SPOT_REASONS = ("Server.SpotInstanceTermination", "Server.SpotInstanceShutdown")
_CAPACITY = {
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "Unsupported",
}  # fmt: skip
_QUOTA = {
    "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded", "VcpuLimitExceeded",
    "SpotMaxPriceTooLow", "RequestLimitExceeded",
}  # fmt: skip
_CREDENTIALS = {
    "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "ExpiredToken", "OptInRequired",
}  # fmt: skip
_VOLUME: dict[str, dict[str, Any]] = {  # SkyPilot's disk tiers
    "low": {"VolumeType": "gp3"},
    "medium": {"VolumeType": "gp3", "Iops": 3500, "Throughput": 250},
    "high": {"VolumeType": "gp3", "Iops": 6000, "Throughput": 375},
    "ultra": {"VolumeType": "io2", "Iops": 16000},
    "best": {"VolumeType": "io2", "Iops": 16000},
}


def _code(e: Exception) -> str:
    """The EC2 error code of a boto3 failure ("" for anything else)."""
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


class AWSAPI(CloudAPI):
    cloud = "aws"

    def __init__(
        self,
        regions: list[str],
        *,
        vpc_name: str | None = None,
        use_internal_ips: bool = False,
        session: Any = None,
    ) -> None:
        self._regions = regions
        self.vpc_name = vpc_name
        self.use_internal_ips = use_internal_ips
        self._session = session
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def catalog_source(self) -> Any:
        from skyloom.activities.catalog import refresh

        return refresh.aws_source(self.regions(), session=self._session)

    # -- plumbing

    def ec2(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                import boto3
                from botocore.config import Config

                session = self._session or boto3.session.Session()
                cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10)
                client = session.client("ec2", region_name=region, config=cfg)
                self._clients[region] = client
            return client

    def _error(self, e: Exception, where: Where) -> Exception:
        """A boto3 failure as the workflow must see it (branching on the error code)."""
        code = _code(e)
        message = getattr(e, "response", {}).get("Error", {}).get("Message", "") or str(e)
        text = f"{code}: {message}" if code else message
        if code in _CAPACITY:
            return provider_error(ErrorKind.NO_CAPACITY, text, where=where)
        if code in _QUOTA:
            return provider_error(ErrorKind.QUOTA, text, where=where)
        if code in _CREDENTIALS or type(e).__name__ in ("NoCredentialsError", "NoRegionError"):
            return provider_error(ErrorKind.CREDENTIALS, text or type(e).__name__, where=where)
        if code.startswith("InvalidAMIID"):
            field = Where(**{**where.__dict__, "field": "resources.image_id"})
            return provider_error(ErrorKind.INVALID_SPEC, text, where=field)
        if code == "InvalidParameterValue" and "instance type" in message.lower():
            field = Where(**{**where.__dict__, "field": "resources.instance_type"})
            return provider_error(ErrorKind.INVALID_SPEC, text, where=field)
        return e  # transient or unknown: the activity's retry policy decides

    # -- the seam

    def check(self) -> CheckResult:
        try:
            import boto3  # noqa: F401
        except ImportError:
            return CheckResult(infra="aws", enabled=False, reason="pip install 'skyloom[aws]'")
        region = self._regions[0] if self._regions else "us-east-1"
        try:
            self.ec2(region).describe_availability_zones()
        except Exception as e:
            err = self._error(e, Where(infra="aws", region=region))
            why = err.message if isinstance(err, ApplicationError) else f"{type(e).__name__}: {e}"
            return CheckResult(infra="aws", enabled=False, reason=why.splitlines()[0][:200])
        return CheckResult(infra="aws", enabled=True, reason=f"credentials work ({region})")

    def regions(self) -> list[str]:
        return list(self._regions)

    def zone_names(self, region: str) -> dict[str, str]:
        """Zone id (the catalog's, the same in every account) → this account's zone name."""
        zones = self.ec2(region).describe_availability_zones()["AvailabilityZones"]
        return {z["ZoneId"]: z["ZoneName"] for z in zones if z.get("State") == "available"}

    def list_instances(self, region: str, owner: str | None = None) -> list[Instance]:
        filters = [{"Name": f"tag:{OWNER_TAG}", "Values": [owner]}] if owner else [
            {"Name": "tag-key", "Values": [OWNER_TAG]}
        ]  # fmt: skip
        out = []
        try:
            pages = self.ec2(region).get_paginator("describe_instances").paginate(Filters=filters)
            for page in pages:
                for res in page["Reservations"]:
                    for inst in res["Instances"]:
                        node = self._instance(region, inst)
                        if node is not None:
                            out.append(node)
        except Exception as e:
            raise self._error(e, Where(infra="aws", region=region)) from e
        return out

    def _instance(self, region: str, inst: dict[str, Any]) -> Instance | None:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        spot = inst.get("InstanceLifecycle") == "spot"
        state = inst["State"]["Name"]
        reason = inst.get("StateReason", {}).get("Code", "")
        reclaimed = spot and (reason in _SPOT_REASONS or STOPPED_TAG not in tags)
        if state in ("shutting-down", "terminated"):
            if not (spot and reason in _SPOT_REASONS):
                return None  # deleted (by us): not a node any more
            node_state = NodeState.PREEMPTED
        elif state == "pending":
            node_state = NodeState.PENDING
        elif state == "running":
            node_state = NodeState.UP
        else:  # stopping, stopped
            node_state = NodeState.PREEMPTED if reclaimed else NodeState.STOPPED
        try:
            rank = int(tags.get(RANK_TAG, "-1"))
        except ValueError:
            rank = -1
        return Instance(
            id=inst["InstanceId"],
            region=region,
            zone=inst.get("Placement", {}).get("AvailabilityZone"),
            state=node_state,
            cluster=tags.get(CLUSTER_TAG, ""),
            owner=tags.get(OWNER_TAG, ""),
            rank=rank,
            workflow_id=tags.get(WORKFLOW_TAG),
            instance_type=inst.get("InstanceType"),
            spot=spot,
            public_ip=inst.get("PublicIpAddress"),
            private_ip=inst.get("PrivateIpAddress"),
        )

    def create_instances(self, req: InstanceRequest) -> list[Instance]:
        where = Where(
            infra="aws", region=req.region, zone=req.zone, instance_type=req.instance_type
        )
        ec2 = self.ec2(req.region)
        try:
            key_name = self._key_pair(ec2, req.ssh_public_key)
            subnet, vpc = self._subnet(ec2, req.region, req.zone, where)
            group = self._security_group(ec2, vpc, req)
            image = req.image_id or self._default_image(ec2, where)
            out = []
            for rank in req.ranks:
                args = self._run_args(req, rank, key_name, subnet, group, image)
                resp = ec2.run_instances(**args)
                for inst in resp["Instances"]:
                    node = self._instance(req.region, inst)
                    if node is not None:
                        out.append(node)
            return out
        except ApplicationError:
            raise
        except Exception as e:
            raise self._error(e, where) from e

    def _run_args(
        self, req: InstanceRequest, rank: int, key: str, subnet: str, group: str, image: str
    ) -> dict[str, Any]:
        tags = {
            **{k[:128]: v[:256] for k, v in req.labels.items()},
            "Name": f"{req.cluster}-{rank}"[:256],
            OWNER_TAG: req.owner,
            CLUSTER_TAG: req.cluster,
            RANK_TAG: str(rank),
        }
        if req.workflow_id:
            tags[WORKFLOW_TAG] = req.workflow_id
        spec = [{"Key": k, "Value": v} for k, v in tags.items()]
        volume: dict[str, Any] = {
            "VolumeSize": req.disk_size_gb,
            "DeleteOnTermination": True,
            **_VOLUME.get(req.disk_tier or "medium", _VOLUME["medium"]),
        }
        args: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": req.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": key,
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": subnet,
                    "Groups": [group],
                    "AssociatePublicIpAddress": not self.use_internal_ips,
                }
            ],
            "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": volume}],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": spec},
                {"ResourceType": "volume", "Tags": spec},
            ],
        }
        if req.spot:
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        return args

    def _key_pair(self, ec2: Any, public_key: str) -> str:
        name = f"skyloom-{digest(public_key)}"
        found = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])
        if not found["KeyPairs"]:
            try:
                ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode())
            except Exception as e:
                if _code(e) != "InvalidKeyPair.Duplicate":  # made meanwhile by another call
                    raise
        return name

    def _subnet(self, ec2: Any, region: str, zone: str | None, where: Where) -> tuple[str, str]:
        if self.vpc_name:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [self.vpc_name]}])
            what = f"VPC named {self.vpc_name!r} (aws.vpc_name)"
        else:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
            what = "default VPC"
        if not vpcs["Vpcs"]:
            raise provider_error(
                ErrorKind.INVALID_SPEC, f"no {what} in {region}", where=where, non_retryable=True
            )
        vpc = vpcs["Vpcs"][0]["VpcId"]
        filters = [{"Name": "vpc-id", "Values": [vpc]}]
        if zone:
            filters.append({"Name": "availability-zone", "Values": [zone]})
        subnets = ec2.describe_subnets(Filters=filters)["Subnets"]
        if not subnets:
            raise provider_error(
                ErrorKind.NO_CAPACITY, f"the {what} has no subnet in {zone or region}", where=where
            )
        return sorted(subnets, key=lambda s: s["SubnetId"])[0]["SubnetId"], vpc

    def _security_group(self, ec2: Any, vpc: str, req: InstanceRequest) -> str:
        name = f"skyloom-{digest(req.owner)}"
        found = ec2.describe_security_groups(
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [vpc]},
            ]
        )["SecurityGroups"]
        if found:
            return str(found[0]["GroupId"])
        group = ec2.create_security_group(
            GroupName=name,
            Description=f"skyloom cluster {req.cluster}",
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [
                        {"Key": OWNER_TAG, "Value": req.owner},
                        {"Key": CLUSTER_TAG, "Value": req.cluster},
                    ],
                }
            ],
        )["GroupId"]
        perms = []
        for port in ["22", *req.ports]:
            low, _, high = port.partition("-")
            perms.append(
                {
                    "IpProtocol": "tcp",
                    "FromPort": int(low),
                    "ToPort": int(high or low),
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                }
            )
        # Nodes of one cluster talk to each other on every port (distributed training).
        perms.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]})
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=perms)
        return str(group)

    def _default_image(self, ec2: Any, where: Where) -> str:
        for pattern in UBUNTU_IMAGES:
            images = ec2.describe_images(
                Owners=[CANONICAL], Filters=[{"Name": "name", "Values": [pattern]}]
            )["Images"]
            if images:
                return str(max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"])
        raise provider_error(
            ErrorKind.INVALID_SPEC,
            f"no Ubuntu 22.04/24.04 image from Canonical in {where.region}; set image_id",
            where=Where(**{**where.__dict__, "field": "resources.image_id"}),
        )

    def delete_instances(self, region: str, owner: str) -> None:
        ec2 = self.ec2(region)
        where = Where(infra="aws", region=region)
        try:
            ids = [i.id for i in self.list_instances(region, owner)]
            if ids:
                ec2.terminate_instances(InstanceIds=ids)
            groups = ec2.describe_security_groups(
                Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [owner]}]
            )["SecurityGroups"]
            for g in groups:
                try:
                    ec2.delete_security_group(GroupId=g["GroupId"])
                except Exception as e:
                    if _code(e) == "InvalidGroup.NotFound":
                        continue
                    if _code(e) == "DependencyViolation":
                        # Instances still shutting down hold it: retried until they are gone.
                        raise provider_error(
                            ErrorKind.UNREACHABLE,
                            f"security group {g['GroupId']} still in use by instances "
                            "shutting down",
                            where=where,
                        ) from e
                    raise
        except ApplicationError:
            raise
        except Exception as e:
            raise self._error(e, where) from e

    def stop_instances(self, region: str, owner: str) -> None:
        ec2 = self.ec2(region)
        nodes = self.list_instances(region, owner)
        if any(n.spot for n in nodes):
            raise provider_error(
                ErrorKind.NOT_SUPPORTED,
                "spot instances cannot be stopped on AWS (down them instead)",
                where=Where(infra="aws", region=region),
            )
        ids = [n.id for n in nodes if n.state in (NodeState.UP, NodeState.PENDING)]
        if ids:
            ec2.create_tags(Resources=ids, Tags=[{"Key": STOPPED_TAG, "Value": "1"}])
            ec2.stop_instances(InstanceIds=ids)

    def start_instances(self, region: str, owner: str) -> None:
        ec2 = self.ec2(region)
        ids = [n.id for n in self.list_instances(region, owner) if n.state is NodeState.STOPPED]
        if ids:
            try:
                ec2.start_instances(InstanceIds=ids)
            except Exception as e:
                raise self._error(e, Where(infra="aws", region=region)) from e
            ec2.delete_tags(Resources=ids, Tags=[{"Key": STOPPED_TAG}])
