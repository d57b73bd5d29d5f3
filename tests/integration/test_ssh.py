"""SSH node pools end to end: real sshd hosts, the real CLI, engine and worker.

Hosts are separate network namespaces with their own addresses where the tests run as
root (as in CI), and sshd on loopback ports otherwise; both kinds are exercised when
possible. Every assertion about a node is made on the files the job left there.

As root, hosts are logged into as a dedicated test user with a clean home (tests/sshd.py):
files a job reads or writes live in `shared`, a directory that user can reach.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import Sky, _alive, wait_until
from tests.sshd import SSHHosts, needs_sshd, netns_missing_reason

pytestmark = [
    pytest.mark.integration,
    needs_sshd,
]

NETNS = netns_missing_reason() is None


@dataclass
class Pools:
    hosts: SSHHosts
    file: Path
    pools: dict[str, dict]
    # Where each node keeps its directories: the ssh user's home, not the tests' HOME.
    node_home: Path

    def add(self, name: str, pool: dict) -> str:
        self.pools[name] = pool
        self.file.write_text(yaml.safe_dump(self.pools))
        return f"ssh/{name}"

    def node_root(self, ip: str, port: int) -> Path:
        return self.hosts.node_root(ip, port)


@pytest.fixture(scope="module")
def pools(sky: Sky, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pools]:
    hs = SSHHosts(tmp_path_factory.mktemp("sshd"))
    try:
        yield Pools(hs, Path(sky.env["SKYLOOM_HOME"]) / "ssh_node_pools.yaml", {}, hs.home)
    finally:
        sky.run("down", "-a", "-y", timeout=120)
        hs.close()


@pytest.fixture
def shared(pools: Pools) -> Path:
    """A directory of this test's that jobs on the hosts (the SSH user) can write."""
    return pools.hosts.user_dir()


def _two_hosts(pools: Pools, name: str) -> tuple[str, list]:
    """A two-host pool: namespaces with their own IPs when possible, else loopback."""
    add = pools.hosts.add_netns if NETNS else pools.hosts.add_loopback
    hosts = [add(), add()]
    return pools.add(name, pools.hosts.pool(hosts)), hosts


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_two_node_job_env_sync_logs_and_down(sky: Sky, pools: Pools, tmp_path: Path):
    infra, hosts = _two_hosts(pools, "duo")
    proj = tmp_path / "proj"
    write(proj / "train.py", "print('train')\n")
    write(proj / "sub" / "data.txt", "d\n")
    write(proj / "model.ckpt", "big")
    write(proj / "sub" / "cache.tmp", "x")
    write(proj / "notes.txt", "private")
    write(proj / ".gitignore", "*.ckpt\n")
    write(proj / "sub" / ".gitignore", "*.tmp\n")
    write(proj / ".skyignore", "notes.txt\n")
    write(tmp_path / "mount" / "m.txt", "mounted\n")
    write(tmp_path / "one.cfg", "cfg\n")
    mnt, cfg = f"/tmp/skyloom-test-mount-{tmp_path.name}", f"~/skyloom-test-{tmp_path.name}.cfg"
    task = write(
        tmp_path / "task.yaml",
        f"""\
        name: duo
        num_nodes: 2
        workdir: {proj}
        file_mounts:
          {mnt}: {tmp_path / "mount"}
          {cfg}: {tmp_path / "one.cfg"}
        envs:
          MODEL: llama
        setup: echo "setup rank $SKYPILOT_SETUP_NODE_RANK"
        run: |
          echo "rank=$SKYPILOT_NODE_RANK n=$SKYPILOT_NUM_NODES model=$MODEL"
          echo "ips=$(echo \"$SKYPILOT_NODE_IPS\" | tr '\\n' ,)"
          echo "files=$(find . -type f | sort | tr '\\n' ' ')"
          echo "mount=$(cat {mnt}/m.txt) cfg=$(cat {cfg})"
          echo "task=$SKYPILOT_TASK_ID"
        """,
    )
    out = sky.ok("launch", "-y", "-c", "duo", "--infra", infra, str(task), timeout=300)
    ips = ",".join(h.ip for h in hosts) + ","
    assert "setup rank 0" in out
    assert "rank=0 n=2 model=llama" in out
    assert f"ips={ips}" in out
    files = next(line for line in out.splitlines() if line.startswith("files="))
    assert "./train.py" in files and "./sub/data.txt" in files and "./.gitignore" in files
    for ignored in ("model.ckpt", "cache.tmp", "notes.txt"):
        assert ignored not in files
    assert "mount=mounted cfg=cfg" in out
    subprocess.run(["rm", "-rf", mnt, str(pools.node_home / cfg[2:])], check=True)
    rank1 = sky.ok("logs", "duo", "1", "--no-follow", "--node-rank", "1")
    assert "setup rank 1" in rank1 and "rank=1 n=2 model=llama" in rank1
    assert f"ips={ips}" in rank1
    task_ids = {line for line in out.splitlines() + rank1.splitlines() if "task=" in line}
    assert len(task_ids) == 1  # one task id, shared by both nodes
    c = sky.clusters()["duo"]
    assert (c["status"], c["infra"], c["num_nodes"]) == ("UP", infra, 2)
    # Each host is claimed by this cluster, on the host itself.
    roots = [pools.node_root(h.ip, h.port) for h in hosts]
    for root in roots:
        assert os.readlink(root / "claim").startswith("duo.")
        assert (root / "sky_workdir" / "train.py").exists()
        assert not (root / "sky_workdir" / "model.ckpt").exists()
    # A claimed host is not given to a second cluster.
    p = sky.run("launch", "-y", "-c", "other", "--infra", infra, "echo never", timeout=120)
    assert p.returncode != 0
    assert "held by 'duo." in p.stdout + p.stderr
    sky.ok("down", "-y", "duo", timeout=120)
    for root in roots:
        assert not (root / "claim").exists() and not (root / "jobs").exists()
    # Released hosts can be claimed again.
    sky.ok("launch", "-y", "-c", "again", "--infra", infra, "--num-nodes", "2", "echo ok")
    sky.ok("down", "-y", "again")
    assert "other" not in sky.clusters()


def test_exec_cancel_stop_start_on_ssh_nodes(sky: Sky, pools: Pools, shared: Path):
    infra, hosts = _two_hosts(pools, "ops")
    sky.ok("launch", "-y", "-c", "ops", "--infra", infra, "--num-nodes", "2", "echo up")
    pids = shared / "pids"
    long = f"sleep 300 & echo $SKYPILOT_NODE_RANK:$! >> {pids}; wait"
    sky.ok("exec", "-d", "--num-nodes", "2", "ops", long)
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 60, "both ranks")
    children = [int(x.split(":")[1]) for x in pids.read_text().split()]
    assert sky.jobs("ops")[2]["status"] == "RUNNING"
    sky.ok("cancel", "-y", "ops", "2")
    wait_until(lambda: sky.jobs("ops")[2]["status"] == "CANCELLED", 60, "cancelled")
    # The job's whole process group died on both nodes, children included.
    wait_until(lambda: not any(_alive(p) for p in children), 20, "sleeps to die")
    # Setup is not rerun by exec; queue shows every job.
    sky.ok("exec", "ops", "echo second")
    assert [j["status"] for j in sky.json("queue", "ops")] == [
        "SUCCEEDED",
        "CANCELLED",
        "SUCCEEDED",
    ]
    # stop: jobs die, the hosts stay claimed; start: the same hosts come back.
    pids.unlink()
    sky.ok("exec", "-d", "--num-nodes", "2", "ops", long)
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 60, "both ranks")
    children = [int(x.split(":")[1]) for x in pids.read_text().split()]
    sky.ok("stop", "-y", "ops", timeout=120)
    assert sky.clusters()["ops"]["status"] == "STOPPED"
    wait_until(lambda: not any(_alive(p) for p in children), 20, "jobs killed by stop")
    for h in hosts:
        assert os.readlink(pools.node_root(h.ip, h.port) / "claim").startswith("ops.")
    sky.ok("start", "-y", "ops", timeout=120)
    assert "back" in sky.ok("exec", "ops", "echo back")
    sky.ok("down", "-y", "ops")


def test_worker_killed_during_setup_does_not_rerun_finished_setup(
    sky: Sky, pools: Pools, tmp_path: Path, shared: Path
):
    infra, _ = _two_hosts(pools, "crash")
    setups, runs, gate = shared / "setups", shared / "runs", shared / "gate"
    # Rank 0 finishes setup at once; rank 1 waits for the gate: the worker dies while one
    # node has completed setup and the other is mid-setup.
    setup = (
        f"echo $SKYPILOT_SETUP_NODE_RANK >> {setups}; "
        f'if [ "$SKYPILOT_SETUP_NODE_RANK" = 1 ]; then '
        f"while [ ! -f {gate} ]; do sleep 0.2; done; fi"
    )
    task = write(
        tmp_path / "t.yaml",
        f"num_nodes: 2\nsetup: |\n  {setup}\nrun: |\n  echo $SKYPILOT_NODE_RANK >> {runs}\n",
    )
    sky.ok("launch", "-y", "-d", "-c", "crash", "--infra", infra, str(task), timeout=120)
    wait_until(lambda: setups.exists() and len(setups.read_text().split()) == 2, 60, "setups")
    sky.kill_worker()
    gate.touch()
    sky.restart_worker()
    wait_until(lambda: sky.jobs("crash")[1]["status"] == "SUCCEEDED", 120, "job to succeed")
    assert sorted(setups.read_text().split()) == ["0", "1"]  # once per node, not again
    assert sorted(runs.read_text().split()) == ["0", "1"]
    sky.ok("down", "-y", "crash")


def test_gpus_are_detected_and_a_pool_without_them_is_refused(sky: Sky, pools: Pools, shared: Path):
    fake = shared / "bin"  # the fake nvidia-smi runs as the SSH user
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA A100-SXM4-80GB'\necho 'NVIDIA A100-SXM4-80GB'\n")
    smi.chmod(0o755)
    gpu_host = pools.hosts.add_loopback(path_env=f"{fake}:/usr/local/bin:/usr/bin:/bin")
    plain = pools.hosts.add_loopback()
    infra = pools.add("gpus", pools.hosts.pool([plain, gpu_host]))
    p = sky.run("launch", "-y", "-c", "nogpu", "--infra", infra, "--gpus", "H100:1", "echo x")
    assert p.returncode != 0
    assert "H100" in p.stdout + p.stderr and "A100-80GB:2" in p.stdout + p.stderr
    # Refused before anything started: no host was claimed.
    for h in (gpu_host, plain):
        assert not (pools.node_root(h.ip, h.port) / "claim").exists()
    out = sky.ok(
        "launch", "-y", "-c", "gpu", "--infra", infra, "--gpus", "A100-80GB:2",
        "echo gpus=$SKYPILOT_NUM_GPUS_PER_NODE",
    )  # fmt: skip
    assert "gpus=2" in out
    assert os.readlink(pools.node_root(gpu_host.ip, gpu_host.port) / "claim").startswith("gpu.")
    assert not (pools.node_root(plain.ip, plain.port) / "claim").exists()
    sky.ok("down", "-y", "gpu")


def test_bad_key_is_reported_with_host_and_key_and_not_retried(
    sky: Sky, pools: Pools, tmp_path: Path
):
    host = pools.hosts.add_loopback()
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    pool = {**pools.hosts.pool([host]), "identity_file": str(wrong)}
    infra = pools.add("badkey", pool)
    p = sky.run("launch", "-y", "-c", "badkey", "--infra", infra, "echo x", timeout=120)
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "authentication failed" in text and str(wrong) in text
    assert f"{host.ip}:{host.port}" in text
    hist = sky.ok("status", "-o", "json")
    assert "badkey" not in [c["name"] for c in yaml.safe_load(hist) if c["status"] == "UP"]


def test_unknown_pool_and_too_few_hosts_exit_2_and_start_nothing(sky: Sky, pools: Pools):
    pools.add("solo", pools.hosts.pool([pools.hosts.add_loopback()]))
    p = sky.run("launch", "-y", "-c", "nopool", "--infra", "ssh/sollo", "echo x")
    assert p.returncode == 2
    assert "ssh_node_pools.yaml" in p.stderr and "did you mean 'solo'" in p.stderr
    p = sky.run("launch", "-y", "-c", "nopool", "--infra", "ssh/solo", "--num-nodes", "3", "x")
    assert p.returncode == 2 and "--num-nodes: " in p.stderr and "has 1 host(s)" in p.stderr
    assert "nopool" not in sky.clusters()


def test_check_reports_reachable_and_unreachable_hosts(sky: Sky, pools: Pools):
    up, dead = pools.hosts.add_loopback(), pools.hosts.add_loopback()
    dead.stop()
    pools.add("half", pools.hosts.pool([up, dead]))
    out = sky.ok("check")
    block = out[out.index("ssh/half") :]
    assert "ssh/half: enabled (1/2 hosts reachable)" in out
    assert f"{up.ip}:{up.port}: no GPU, free" in block
    assert f"{dead.ip}:{dead.port}: unreachable: " in block


def test_a_node_that_disappears_fails_the_job_with_the_reason(sky: Sky, pools: Pools, shared: Path):
    host = pools.hosts.add_loopback()
    infra = pools.add("vanish", pools.hosts.pool([host]))
    started = shared / "started"
    # The job says it started a few seconds in: by then the host's watch has reported it
    # running (a host lost within a second of a start is found by the job's own look).
    job = f"sleep 3; touch {started}; sleep 300"
    sky.ok("launch", "-y", "-d", "-c", "vanish", "--infra", infra, job)
    wait_until(started.exists, 60, "job to start")
    host.stop()
    job = wait_until(
        lambda: (j := sky.jobs("vanish")[1])["status"] == "FAILED" and j, 90, "job to fail"
    )
    assert "unreachable" in job["reason"] and f"{host.ip}" in job["reason"]
    # The job itself outlived its host's sshd (it is detached); when the host is back,
    # down kills it and gives the host back.
    job_pid = int((pools.node_root(host.ip, host.port) / "jobs/1/run/pid").read_text())
    # While the host is away, down cannot release it: it says so and how to forget it.
    p = sky.run("down", "-y", "vanish", timeout=180)
    assert p.returncode != 0 and "--purge" in p.stderr
    assert sky.clusters()["vanish"]["status"] == "UP"
    host.restart()
    sky.ok("down", "-y", "vanish", timeout=120)
    wait_until(lambda: not _alive(job_pid), 20, "the orphaned job to be killed by down")
    assert not (pools.node_root(host.ip, host.port) / "claim").exists()


def test_leftovers_of_an_older_cluster_of_the_same_name_are_never_adopted(
    sky: Sky, pools: Pools, shared: Path
):
    # A host still claimed by a "same" cluster of an engine that is gone, with that
    # cluster's finished job 1 on it: the new cluster must not take it for its own.
    old, fresh = pools.hosts.add_loopback(), pools.hosts.add_loopback()
    old_root = pools.node_root(old.ip, old.port)
    (old_root / "jobs/1/run/claim").mkdir(parents=True)
    (old_root / "jobs/1/run/exit_code").write_text("0\n")
    os.symlink("same.0ldc1a55", old_root / "claim")
    # As the older cluster's engine would have left them: the SSH user's files.
    pools.hosts.give(old_root)
    infra = pools.add("leftover", pools.hosts.pool([old, fresh]))
    marker = shared / "ran"
    sky.ok("launch", "-y", "-c", "same", "--infra", infra, f"echo ran > {marker}")
    assert marker.read_text() == "ran\n"  # the job really ran (on the free host)
    assert os.readlink(pools.node_root(fresh.ip, fresh.port) / "claim").startswith("same.")
    assert os.readlink(old_root / "claim") == "same.0ldc1a55"
    sky.ok("down", "-y", "same")
    assert os.readlink(old_root / "claim") == "same.0ldc1a55"  # not ours to release
    subprocess.run(["rm", "-rf", str(old_root)], check=True)


def test_down_purge_forgets_a_host_gone_for_good(sky: Sky, pools: Pools, tmp_path: Path):
    host = pools.hosts.add_loopback()
    infra = pools.add("gone", pools.hosts.pool([host]))
    sky.ok("launch", "-y", "-c", "gone", "--infra", infra, "echo hi")
    host.stop()
    sky.ok("down", "-y", "--purge", "gone", timeout=180)
    assert "gone" not in sky.clusters()
    subprocess.run(["rm", "-rf", str(pools.node_root(host.ip, host.port))], check=True)


def test_managed_job_on_an_ssh_pool_is_woken_by_the_shared_watcher(
    sky: Sky, pools: Pools, tmp_path: Path
):
    host = pools.hosts.add_loopback()
    infra = pools.add("mj", pools.hosts.pool([host]))
    out = sky.ok("jobs", "launch", "-d", "-y", "--infra", infra, "echo managed-on-ssh")
    job = int(out.split("Managed job ")[-1].split()[0])
    # Well inside the workflow's own safety-net look (minutes): the watcher's sweep of
    # the host told it.
    j = wait_until(
        lambda: (
            (j := {r["id"]: r for r in yaml.safe_load(sky.ok("jobs", "queue", "-o", "json"))}[job])[
                "status"
            ]
            == "SUCCEEDED"
            and j
        ),
        60,
        "managed job on ssh to succeed",
    )
    assert j["infra"] == infra
    assert "managed-on-ssh" in sky.ok("jobs", "logs", str(job), "--no-follow")
    assert not (pools.node_root(host.ip, host.port) / "claim").exists()


@pytest.mark.parametrize("kind", ["any_of", "ordered"])
def test_a_full_pool_fails_over_to_the_next_candidate(
    sky: Sky, pools: Pools, tmp_path: Path, kind: str
):
    full = pools.add(f"full-{kind}", pools.hosts.pool([pools.hosts.add_loopback()]))
    free_host = pools.hosts.add_loopback()
    free = pools.add(f"free-{kind}", pools.hosts.pool([free_host]))
    sky.ok("launch", "-y", "-c", f"holder-{kind}", "--infra", full, "echo hold")
    task = write(
        tmp_path / f"{kind}.yaml",
        f"""\
        resources:
          {kind}:
            - infra: {full}
            - infra: {free}
        run: echo landed-$SKYPILOT_NODE_RANK
        """,
    )
    p = sky.run("launch", "-y", "-c", f"fo-{kind}", str(task), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "landed-0" in p.stdout
    # The user saw the failover: the full pool was tried first, and why it gave nothing.
    assert f"{full}: NoCapacity" in p.stdout + p.stderr
    c = sky.clusters()[f"fo-{kind}"]
    assert c["infra"] == free
    d = sky.json("status", f"fo-{kind}")[0]
    assert d["infra"] == free
    assert os.readlink(pools.node_root(free_host.ip, free_host.port) / "claim").startswith("fo-")
    sky.ok("down", "-y", f"fo-{kind}", f"holder-{kind}")


def test_no_capacity_anywhere_exits_1_naming_every_candidate_and_holds_nothing(
    sky: Sky, pools: Pools, tmp_path: Path
):
    a_host, b_host = pools.hosts.add_loopback(), pools.hosts.add_loopback()
    a = pools.add("busy-a", pools.hosts.pool([a_host]))
    b = pools.add("busy-b", pools.hosts.pool([b_host]))
    sky.ok("launch", "-y", "-c", "hold-a", "--infra", a, "echo hold")
    sky.ok("launch", "-y", "-c", "hold-b", "--infra", b, "echo hold")
    task = write(
        tmp_path / "nope.yaml",
        f"resources:\n  any_of:\n    - infra: {a}\n    - infra: {b}\nrun: echo never\n",
    )
    p = sky.run("launch", "-y", "-c", "nope", str(task), timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert f"{a}: NoCapacity" in out and f"{b}: NoCapacity" in out
    assert "held by 'hold-a." in out and "held by 'hold-b." in out
    assert sky.clusters().get("nope", {}).get("status") != "UP"
    for h, holder in ((a_host, "hold-a."), (b_host, "hold-b.")):
        assert os.readlink(pools.node_root(h.ip, h.port) / "claim").startswith(holder)
    sky.ok("down", "-y", "hold-a", "hold-b")
    # Released: `ordered` now takes the first pool again.
    ordered = write(
        tmp_path / "ordered.yaml",
        f"resources:\n  ordered:\n    - infra: {a}\n    - infra: {b}\nrun: echo again\n",
    )
    sky.ok("launch", "-y", "-c", "again", str(ordered), timeout=300)
    assert sky.clusters()["again"]["infra"] == a
    sky.ok("down", "-y", "again")
