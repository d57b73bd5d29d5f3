"""Clouds end to end: the real CLI, dev server and worker launching on AWS (moto's server),
GCP and Azure (REST fakes) through the real SDKs, with one real sshd playing every node
(the fakes hand out loopback addresses). Capacity and spot interruptions are made in the
backends (tests/fakes/cloud_lab.py), never by patching skyloom; every test ends by
showing what the clouds still hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from skyloom.activities.providers.cloud import FULL_SCAN_SECONDS
from skyloom.workflows.models import ManagedJobStatus

from tests.fakes.cloud_lab import AWS_IMAGE, CloudLab, worker_env
from tests.fakes.moto_ec2 import reclaim_spot
from tests.integration.conftest import Sky, wait_until
from tests.sshd import SSHHosts, needs_sshd

pytestmark = [pytest.mark.integration, needs_sshd]

# How long to wait for what only the watcher sees (a job's end, a reclaimed node):
# generous, it is seen within a sweep or two; past the full scan of every region.
WATCHED = FULL_SCAN_SECONDS + 120

# Cheapest first in the shipped catalog: Azure's one region, then AWS's zones, then GCP's:
# a cross-cloud failover when Azure has no room.
ANY_CLOUD = {
    "ports": 8080,
    "any_of": [
        {"infra": "azure", "instance_type": "Standard_D2s_v5"},
        {"infra": "aws", "instance_type": "m6i.xlarge", "image_id": AWS_IMAGE},
        {"infra": "gcp", "instance_type": "n1-standard-8"},
    ],
}


@dataclass
class Clouds:
    sky: Sky
    lab: CloudLab
    hosts: SSHHosts


@pytest.fixture(scope="module")
def clouds(skyloom_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    hosts = SSHHosts(tmp_path_factory.mktemp("sshd"))
    sshd = hosts.add_every_loopback()
    home = tmp_path_factory.mktemp("skyloom-home")
    try:
        with CloudLab(ssh_user=hosts.user, ssh_port=sshd.port) as lab:
            hosts.authorize(lab.prepare_home(home))
            base = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
            env = {
                **worker_env(base, lab),
                "SKYLOOM_HOME": str(home),
                "NO_COLOR": "1",
                "COLUMNS": "200",
                "SKYLOOM_UNREACHABLE_GRACE_SECONDS": "8",
            }
            sky = Sky(skyloom_bin, env)
            try:
                sky.ok("engine", "start", timeout=120)
                yield Clouds(sky, lab, hosts)
            finally:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sky.run("down", "-a", "-y", timeout=120)
                sky.run("engine", "stop", timeout=60)
    finally:
        # Each node (one per address) kept its directory on the one sshd host.
        for d in hosts.home.joinpath(".skyloom_node").glob(f"*_{sshd.port}"):
            shutil.rmtree(d, ignore_errors=True)
        hosts.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return request.node.name.removeprefix("test_").replace("_", "-")[:30].rstrip("-")


def dump(path: Path, task: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(task))
    return path


def plan(sky: Sky, cluster: str, task: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = sky.json("launch", "--dryrun", "-c", cluster, str(task))["plan"]
    return rows


def aws_nodes(lab: CloudLab, cluster: str) -> list[dict[str, Any]]:
    def tags(inst: dict[str, Any]) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}

    return [i for i in lab.aws_instances() if tags(i).get("skyloom-cluster") == cluster]


def managed_jobs(sky: Sky) -> dict[int, dict[str, Any]]:
    return {j["id"]: j for j in json.loads(sky.ok("jobs", "queue", "-o", "json"))}


def test_check_enables_every_cloud(clouds: Clouds):
    report = clouds.sky.json("check")
    infras = {r["infra"]: r for r in report["infras"]}
    for cloud in ("aws", "gcp", "azure"):
        assert infras[cloud]["enabled"], infras[cloud]
        assert "spot" in infras[cloud]["capabilities"]


def test_cheapest_place_out_of_capacity_fails_over_to_the_next(
    clouds: Clouds, name: str, tmp_path: Path
):
    sky, lab = clouds.sky, clouds.lab
    task = dump(
        tmp_path / "task.yaml",
        {"num_nodes": 2, "resources": ANY_CLOUD, "run": "echo hello-$SKYPILOT_NODE_RANK"},
    )
    first, second, *_ = plan(sky, name, task)
    # One cloud's only placement first, another cloud's zone next.
    assert first["infra"].split("/")[0] != second["infra"].split("/")[0], (first, second)
    lab.exhaust(first["infra"])
    try:
        p = sky.run("launch", "-y", "-c", name, str(task), timeout=WATCHED)
    finally:
        lab.restore_capacity()
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "hello-0" in out
    assert f"{first['infra']} {first['instance_type']}: NoCapacity" in out
    assert "hello-1" in sky.ok("logs", name, "1", "--no-follow", "--node-rank", "1")
    cluster = sky.clusters()[name]
    assert (cluster["status"], cluster["num_nodes"]) == ("UP", 2)
    assert cluster["infra"] == second["infra"]
    cloud, _, zone = second["infra"].split("/")
    assert cloud == "aws"
    nodes = aws_nodes(lab, name)
    assert [n["Placement"]["AvailabilityZone"] for n in nodes] == [zone, zone]
    assert {n["InstanceType"] for n in nodes} == {second["instance_type"]}
    # Nothing of the failed Azure attempt is left while the cluster runs on AWS.
    held = lab.holdings()
    assert not any(held[k] for k in ("azure vms", "azure nics", "azure public ips", "azure nsgs"))
    sky.ok("down", "-y", name, timeout=120)
    assert lab.wait_clean() == {}


def test_no_capacity_anywhere_exits_1_with_what_was_tried(
    clouds: Clouds, name: str, tmp_path: Path
):
    sky, lab = clouds.sky, clouds.lab
    task = dump(
        tmp_path / "task.yaml", {"resources": ANY_CLOUD, "run": "echo ran-$SKYPILOT_NODE_RANK"}
    )
    placements = plan(sky, name, task)
    assert {p["infra"].split("/")[0] for p in placements} == {"aws", "gcp", "azure"}
    lab.exhaust_everything()
    try:
        p = sky.run("launch", "-y", "-c", name, str(task), timeout=300)
    finally:
        lab.restore_capacity()
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "ran-0" not in out
    # The table closes the output: one row per placement, in the order tried, each
    # saying why (the provider's detail on the same line).
    assert "tried:" in out, out
    table = out[out.rindex("tried:") :].splitlines()[1:]
    rows = [line.strip() for line in table if line.startswith("  ") and ": " in line]
    expected = [f"{r['infra']} {r['instance_type']}: NoCapacity: " for r in placements]
    assert len(rows) == len(expected), "\n".join(table)
    for row, start in zip(rows, expected, strict=True):
        assert row.startswith(start), (row, start)
    assert name not in sky.clusters()
    assert lab.wait_clean() == {}


@pytest.mark.parametrize(
    "strategy,same_zone",
    [("EAGER_NEXT_REGION", False), ("FAILOVER", True)],
)
def test_spot_job_reclaimed_on_aws_recovers_where_its_strategy_says(
    clouds: Clouds, name: str, tmp_path: Path, strategy: str, same_zone: bool
):
    """EAGER_NEXT_REGION (the default) moves away from the place that was reclaimed (here
    to another zone: one region is configured); FAILOVER tries that place again first."""
    sky, lab = clouds.sky, clouds.lab
    shared = clouds.hosts.user_dir()
    starts, go = shared / "starts", shared / "go"
    # Each attempt says it started, then waits for the test's go.
    run = f"""\
echo "start $SKYPILOT_TASK_ID" >> {starts}
while [ ! -f {go} ]; do sleep 0.2; done
echo spot-done
"""
    resources = {"infra": "aws", "instance_type": "m6i.xlarge", "image_id": AWS_IMAGE}
    spot = {**resources, "use_spot": True, "job_recovery": strategy}
    task = dump(tmp_path / "spot.yaml", {"resources": spot, "run": run})
    out = sky.ok("jobs", "launch", "-d", "-y", "-n", name, str(task))
    job = int(out.split("Managed job ")[-1].split()[0])

    def lines() -> list[str]:
        return starts.read_text().splitlines() if starts.exists() else []

    try:
        wait_until(lambda: len(lines()) == 1, 120, "the first attempt to run")
        view = managed_jobs(sky)[job]
        (first,) = aws_nodes(lab, view["cluster"])
        assert first["InstanceLifecycle"] == "spot"
        # Whom the watcher tells when AWS takes the node back.
        tags = {t["Key"]: t["Value"] for t in first["Tags"]}
        assert tags.get("skyloom-workflow") == view["workflow_id"], tags
        reclaim_spot(first["InstanceId"])
        wait_until(lambda: len(lines()) == 2, WATCHED, "the job to run again after the reclaim")
        view = managed_jobs(sky)[job]
        assert view["recovery_count"] == 1
        (second,) = aws_nodes(lab, view["cluster"])
        assert second["InstanceId"] != first["InstanceId"]
        zones = (first["Placement"]["AvailabilityZone"], second["Placement"]["AvailabilityZone"])
        assert (zones[0] == zones[1]) is same_zone, zones
        # Same task id: a recovered job can resume from its checkpoint.
        assert len(set(lines())) == 1
        go.touch()
        final = wait_until(
            lambda: (j := managed_jobs(sky)[job])["status"] == "SUCCEEDED" and j,
            WATCHED,
            "success",
        )
        assert final["recovery_count"] == 1
        assert "spot-done" in sky.ok("jobs", "logs", str(job), "--no-follow")
        assert lab.wait_clean() == {}
    finally:
        go.touch()  # whatever failed, the job ends and its cluster goes
        wait_until(
            lambda: ManagedJobStatus(managed_jobs(sky)[job]["status"]).terminal,
            WATCHED,
            "the job to end",
        )
        lab.wait_clean()


def test_worker_killed_while_creating_nodes_makes_no_duplicate(
    clouds: Clouds, name: str, tmp_path: Path
):
    sky, lab = clouds.sky, clouds.lab
    assert lab.gcp is not None
    gcp = lab.gcp
    task = dump(
        tmp_path / "task.yaml",
        {
            "num_nodes": 2,
            "resources": {"infra": "gcp", "instance_type": "n1-standard-8"},
            "run": "echo hello-$SKYPILOT_NODE_RANK",
        },
    )

    def ours() -> dict[str, dict[str, Any]]:
        def cluster_of(inst: dict[str, Any]) -> str | None:
            items = inst.get("metadata", {}).get("items", [])
            return {i["key"]: i["value"] for i in items}.get("skyloom-cluster")

        return {n: i for n, i in gcp.instances.items() if cluster_of(i) == name}

    def inserts() -> int:
        calls = gcp.calls("POST", r"/zones/[^/]+/instances$")
        return sum(1 for c in calls if (c.body or {}).get("name", "").startswith(f"{name}-"))

    # GCP holds the inserts' operations: the create activity is in flight (waiting on
    # them) when the worker dies, and the instances already exist.
    with lab.held_gcp_operations():
        sky.ok("launch", "-y", "-d", "-c", name, str(task))
        wait_until(lambda: len(ours()) == 2, 60, "both instances to be inserted")
        waits = r"/zones/[^/]+/operations/[^/]+/wait$"
        wait_until(lambda: gcp.calls("POST", waits), 60, "the create to wait on GCP")
        sky.kill_worker()
    for instance in ours():
        gcp.boot(instance)
    sky.restart_worker()
    wait_until(lambda: sky.jobs(name)[1]["status"] == "SUCCEEDED", WATCHED, "the job to succeed")
    assert inserts() == 2
    (owner,) = {
        i["value"]
        for inst in ours().values()
        for i in inst["metadata"]["items"]
        if i["key"] == "skyloom-owner"
    }
    assert lab.instances_of(owner) == sorted(f"gcp:{n}" for n in ours())
    assert len(lab.instances_of(owner)) == 2
    assert "hello-1" in sky.ok("logs", name, "1", "--no-follow", "--node-rank", "1")
    sky.ok("down", "-y", name, timeout=120)
    assert lab.wait_clean() == {}


def test_stop_start_and_exec_on_aws(clouds: Clouds, name: str, tmp_path: Path):
    sky, lab = clouds.sky, clouds.lab
    resources = {"infra": "aws", "instance_type": "m6i.xlarge", "image_id": AWS_IMAGE}
    task = dump(tmp_path / "t.yaml", {"resources": resources, "run": "echo up-$SKYPILOT_NODE_RANK"})
    assert "up-0" in sky.ok("launch", "-y", "-c", name, str(task))
    (node,) = aws_nodes(lab, name)
    sky.ok("stop", "-y", name)
    assert [i["State"]["Name"] for i in aws_nodes(lab, name)] == ["stopped"]
    assert sky.clusters()[name]["status"] == "STOPPED"
    sky.ok("start", name)
    (again,) = aws_nodes(lab, name)
    assert (again["InstanceId"], again["State"]["Name"]) == (node["InstanceId"], "running")
    assert "again-0" in sky.ok("exec", name, "echo again-$SKYPILOT_NODE_RANK")
    sky.ok("down", "-y", name)
    assert lab.wait_clean() == {}
