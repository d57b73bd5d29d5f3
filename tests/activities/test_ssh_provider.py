"""The SSH provider and runner against real sshd hosts, without an engine: claims, host
keys, failure classification, GPU names, rsync installation."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
import yaml
from skyloom.activities.errors import ErrorKind
from skyloom.activities.models import ClusterRef, ProvisionInput
from skyloom.activities.providers.ssh import SSHProvider, SSHRunner, gpu_name, gpus_fit
from skyloom.activities.runners import CommandResult
from temporalio.exceptions import ApplicationError

from tests.sshd import SSHHosts, needs_sshd


def provider(tmp_path: Path, pool: dict) -> SSHProvider:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "ssh_node_pools.yaml").write_text(yaml.safe_dump({"p": pool}))
    return SSHProvider(home)


def req(cluster: str, n: int = 1, **resources: object) -> ProvisionInput:
    return ProvisionInput(
        cluster=cluster, infra="ssh/p", num_nodes=n, resources=resources, owner=f"{cluster}.u1"
    )


@pytest.mark.parametrize(
    ("smi", "name"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
    ],
)
def test_nvidia_smi_names_become_skypilot_names(smi: str, name: str):
    assert gpu_name(smi) == name


def test_gpu_fit_is_by_name_and_count():
    assert gpus_fit({"A100": 8}, {"a100": 4})
    assert not gpus_fit({"A100": 2}, {"A100": 4})
    assert not gpus_fit({}, {"T4": 1})
    assert gpus_fit({}, None)


@needs_sshd
def test_claims_are_idempotent_exclusive_and_released(tmp_path: Path, hosts: SSHHosts):
    hosts.add_loopback()
    hosts.add_loopback()
    prov = provider(tmp_path, hosts.pool())
    h = prov.create(req("a", 2))
    assert prov.create(req("a", 2)) == h  # a retried launch finds its own hosts
    with pytest.raises(ApplicationError) as e:
        prov.create(req("b", 1))
    assert e.value.type == ErrorKind.NO_CAPACITY.value and e.value.non_retryable
    assert "held by 'a.u1'" in e.value.message
    # A launch that crashed before returning a handle is cleaned up by name and owner.
    prov.terminate(ClusterRef(cluster="a", infra="ssh/p", owner="a.u1"))
    assert prov.create(req("b", 2)).nodes[0].node_id == h.nodes[0].node_id
    prov.terminate(ClusterRef(cluster="b", infra="ssh/p", owner="b.u1"))
    for node in h.nodes:
        assert not Path(node.root).exists()


@needs_sshd
def test_changed_host_key_is_refused_and_names_the_file(tmp_path: Path, hosts: SSHHosts):
    host = hosts.add_loopback()
    prov = provider(tmp_path, hosts.pool())
    key_file = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    other = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    known = paramiko.HostKeys()
    known.add(f"[{host.ip}]:{host.port}", other.get_name(), other)
    prov.conns.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    known.save(str(prov.conns.known_hosts))
    with pytest.raises(ApplicationError) as e:
        prov.create(req("k"))
    assert e.value.type == ErrorKind.HOST_KEY.value and e.value.non_retryable
    assert "host key mismatch" in e.value.message and str(prov.conns.known_hosts) in e.value.message


@needs_sshd
def test_first_contact_records_the_host_key(tmp_path: Path, hosts: SSHHosts):
    host = hosts.add_loopback()
    prov = provider(tmp_path, hosts.pool())
    prov.create(req("t"))
    keys = paramiko.HostKeys(str(prov.conns.known_hosts))
    assert keys.lookup(f"[{host.ip}]:{host.port}") is not None
    prov.terminate(ClusterRef(cluster="t", infra="ssh/p", owner="t.u1"))


@needs_sshd
def test_down_host_is_retryable_bad_key_is_not(tmp_path: Path, hosts: SSHHosts):
    host = hosts.add_loopback()
    host.stop()
    prov = provider(tmp_path, hosts.pool())
    with pytest.raises(ApplicationError) as e:
        prov.create(req("d"))
    assert e.value.type == ErrorKind.UNREACHABLE.value and not e.value.non_retryable
    host.restart()
    bad = {**hosts.pool(), "identity_file": str(tmp_path / "sshd" / "host_key")}
    prov = provider(tmp_path, bad)
    with pytest.raises(ApplicationError) as e:
        prov.create(req("d"))
    assert e.value.type == ErrorKind.CREDENTIALS.value and e.value.non_retryable
    assert "authentication failed" in e.value.message and "host_key" in e.value.message


@needs_sshd
def test_runner_reads_from_offsets_and_writes_atomically(tmp_path: Path, hosts: SSHHosts):
    hosts.add_loopback()
    prov = provider(tmp_path, hosts.pool())
    node = prov.create(req("r")).nodes[0]
    runner = prov.runner(node)
    path = f"{node.root}/x/file"
    runner.put_file(path, "héllo\nworld\n", 0o600)
    assert runner.read_file(path) == "héllo\nworld\n".encode()
    assert runner.read_file(path, 7) == b"world\n"
    assert runner.read_file(f"{node.root}/missing") == b""
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert runner.run("exit 3").returncode == 3
    assert runner.run("cat", stdin="in").stdout == "in"
    prov.terminate(ClusterRef(cluster="r", infra="ssh/p", owner="r.u1"))


def test_missing_rsync_that_cannot_be_installed_is_a_clear_final_error():
    class NoRsync(SSHRunner):
        def run(self, command: str, *, stdin: str | None = None, timeout: float = 60):
            return CommandResult(1, "", "sudo: a password is required")

    from skyloom.spec.node_pools import SSHHost

    runner = NoRsync(SSHHost(pool="p", ip="10.9.9.9", user="u"), conns=None)  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as e:
        runner.ensure_rsync()
    assert e.value.type == ErrorKind.NODE_SETUP.value and e.value.non_retryable
    assert "u@10.9.9.9:22" in e.value.message and "install rsync" in e.value.message


@needs_sshd
def test_one_sweep_per_host_reports_ended_watched_phases(tmp_path: Path, hosts: SSHHosts):
    hosts.add_loopback()
    prov = provider(tmp_path, hosts.pool())
    node = prov.create(req("w")).nodes[0]
    runner = prov.runner(node)
    base = f"{node.root}/jobs"
    runner.put_file(f"{base}/1/run/watch", "job-9\nw\n0\n")
    runner.put_file(f"{base}/1/run/exit_code", "3\n")
    runner.put_file(f"{base}/2/setup/watch", "job-9\nw\n0\n")
    runner.run(f"echo 999999 > {base}/2/setup/pid")  # a process that is gone: killed
    runner.put_file(f"{base}/3/run/watch", "job-9\nw\n0\n")
    # Still running: not reported (terminate kills its process group).
    runner.run(f"setsid sleep 60 >/dev/null 2>&1 < /dev/null & echo $! > {base}/3/run/pid")
    runner.put_file(f"{base}/4/run/exit_code", "0\n")  # not watched: not reported
    expected = [("job-9", 1, "exited", 3), ("job-9", 2, "killed", None)]

    def seen() -> list[tuple[str, int | None, str, int | None]]:
        return sorted(
            (w.workflow_id, w.observation.job_id, w.observation.state, w.observation.exit_code)
            for w in prov.sweep("ssh")
        )

    # Host watches answer from what their hosts last sent: the first scan may know nothing.
    end = time.monotonic() + 10
    while seen() != expected and time.monotonic() < end:
        time.sleep(0.1)
    assert seen() == expected
    prov.terminate(ClusterRef(cluster="w", infra="ssh/p", owner="w.u1"))
