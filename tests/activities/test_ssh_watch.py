"""HostWatches against real sshd hosts: one long-lived channel per host reports how the
watched phases on it end, survives the host going away and the loop being killed, and
leaves nothing running on a host it stops watching.

Jobs are started the way the product starts them (nodelet.sh over SSH) and end for real;
loopback hosts share this machine and the SSH user's home, so a test may start jobs
through one host for another host's node directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from skyloom.activities.models import PhaseState
from skyloom.activities.providers.ssh import Connections, SSHRunner
from skyloom.activities.providers.ssh_watch import LOOP_NAME, HostWatches
from skyloom.activities.runners import write_env_file
from skyloom.spec.node_pools import SSHHost

from tests.sshd import Host, SSHHosts, needs_sshd

pytestmark = needs_sshd


def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def ssh_host(hs: SSHHosts, h: Host) -> SSHHost:
    return SSHHost(pool="p", ip=h.ip, port=h.port, user=hs.user, identity_file=str(hs.user_key))


class Node:
    """One host's node directory, with a runner (its own connection, so the watch's
    logins are counted alone) to start phases there as the product does."""

    def __init__(self, hs: SSHHosts, via: SSHHost, host: SSHHost, tmp: Path) -> None:
        self.root = hs.node_root(host.ip, host.port)
        self.runner = SSHRunner(via, Connections(tmp / "runner_known_hosts"))
        self.started: list[Path] = []

    def start(self, job: int, command: str, phase: str = "run", wid: str = "wf-1") -> Path:
        d = self.root / "jobs" / str(job) / phase
        files = {
            f"{d}/cmd.sh": (command + "\n", 0o700),
            f"{d}/env": (write_env_file({"SKYLOOM_CWD": str(self.root)}), 0o600),
            f"{d}/watch": (f"{wid}\nc\n0\n", 0o644),
        }
        self.runner.nodelet("start", str(d), files)
        self.started.append(d)
        return d

    def close(self) -> None:
        """Close the runner's connection, if still open, and end every job left running."""
        self.runner.conns.close_all()
        for d in self.started:
            if not (d / "exit_code").exists():
                kill_job(d)


@pytest.fixture
def nodes(hosts: SSHHosts, tmp_path: Path) -> Iterator[Callable[[SSHHost, SSHHost], Node]]:
    made: list[Node] = []

    def node(via: SSHHost, host: SSHHost) -> Node:
        made.append(Node(hosts, via, host, tmp_path))
        return made[-1]

    yield node
    for n in made:
        n.close()


def pid_of(d: Path) -> int:
    return int(
        until(lambda: (d / "pid").exists() and (d / "pid").read_text().strip(), 10, f"{d}/pid")
    )


def kill_job(d: Path) -> None:
    """The job's whole process group, as a machine's OOM killer or a reboot would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid_of(d), signal.SIGKILL)


def ended(watches: HostWatches) -> set[tuple[str, int, str, int | None]]:
    return {
        (w.workflow_id, w.observation.job_id or 0, w.observation.state, w.observation.exit_code)
        for w in watches.observations()
    }


def loops(host: SSHHost) -> list[int]:
    """Watch loops running for this host on the machine (`bash -c LOOP skyloom-watch KEY`)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if LOOP_NAME.encode() in argv and host.key.encode() in argv:
            found.append(int(cmdline.parent.name))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU of a process and of the children it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def test_endings_are_reported_from_one_login_and_no_process_per_phase(
    tmp_path: Path, hosts: SSHHosts, nodes: Callable[[SSHHost, SSHHost], Node]
):
    # The watched host's PATH holds bash alone: a loop that ran any other program would
    # get it wrong (so it runs none, whatever the number of phases).
    bare = hosts.user_dir("bin-")
    (bare / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
    via = ssh_host(hosts, hosts.add_loopback())
    h = hosts.add_loopback(path_env=str(bare))
    host = ssh_host(hosts, h)
    node = nodes(via, host)
    # Hundreds of finished phases, as a host keeps them; one not watched.
    for job in range(100, 400):
        d = node.root / "jobs" / str(job) / "run"
        d.mkdir(parents=True)
        (d / "watch").write_text(f"old-{job}\nc\n0\n")
        (d / "exit_code").write_text("0\n")
    (node.root / "jobs/400/run").mkdir(parents=True)
    (node.root / "jobs/400/run/exit_code").write_text("1\n")
    (node.root / "jobs/4/setup").mkdir(parents=True)
    (node.root / "jobs/4/setup/watch").write_text("wf-1\nc\n0\n")  # not started yet
    hosts.give(node.root)
    failing = node.start(1, "exit 3")
    killed = node.start(2, "sleep 60")
    node.start(3, "sleep 60")  # still running: not reported
    until(lambda: (failing / "exit_code").exists(), 10, "job 1 to end")
    logins = hosts.logins(h)
    old = {(f"old-{j}", j, PhaseState.EXITED, 0) for j in range(100, 400)}
    with HostWatches(Connections(tmp_path / "known_hosts")) as watches:
        watches.sync([host])
        until(lambda: ended(watches) == old | {("wf-1", 1, "exited", 3)}, 10, "first look")
        kill_job(killed)
        until(lambda: ("wf-1", 2, "killed", None) in ended(watches), 10, "the killed job")
        assert watches.status() == {host.address: "live"}
        (loop,) = loops(host)
        assert f"PATH={bare}".encode() in Path(f"/proc/{loop}/environ").read_bytes().split(b"\0")
        cpu, t = cpu_seconds(loop), time.monotonic()
        time.sleep(3)
        # 303 phases looked at every second: well under a tenth of a core.
        assert (cpu_seconds(loop) - cpu) / (time.monotonic() - t) < 0.1
        assert ended(watches) == old | {("wf-1", 1, "exited", 3), ("wf-1", 2, "killed", None)}
        assert hosts.logins(h) == logins + 1  # one login, not one per look
    until(lambda: not loops(host), 5, "the loop to end with its channel")


def test_a_host_gone_past_grace_makes_its_phases_unreachable_then_tells_their_end(
    tmp_path: Path, hosts: SSHHosts, nodes: Callable[[SSHHost, SSHHost], Node]
):
    h = hosts.add_loopback()
    host = ssh_host(hosts, h)
    node = nodes(host, host)
    gate = hosts.user_dir() / "gate"
    node.start(1, "exit 0", wid="wf-done")
    d = node.start(2, f"while [ ! -f {gate} ]; do sleep 0.2; done; exit 5")
    pid_of(d)
    node.runner.conns.close_all()
    with HostWatches(Connections(tmp_path / "known_hosts"), grace=2) as watches:
        watches.sync([host])
        until(lambda: watches.status()[host.address] == "live", 10, "live")
        until(lambda: ended(watches) == {("wf-done", 1, "exited", 0)}, 10, "job 1")
        h.stop()
        until(lambda: watches.status()[host.address].startswith("down for"), 5, "down")
        assert ended(watches) == {("wf-done", 1, "exited", 0)}  # not yet: within grace
        # The loop noticed its channel go and ended: nothing left behind on the host.
        until(lambda: not loops(host), 5, "the loop to end with its channel")
        gone = until(
            lambda: [
                w.observation
                for w in watches.observations()
                if w.observation.state == PhaseState.UNREACHABLE
            ],
            5,
            "running phase to be unreachable",
        )
        assert [(o.job_id, o.rank) for o in gone] == [(2, 0)]
        why = watches.status()[host.address].split(": ", 1)[1]  # "down for 3s: <why>"
        assert gone[0].reason == f"node 0 ({h.ip}) unreachable for more than 2s: {why}"
        assert str(h.port) in why  # paramiko: "Unable to connect to port <port> on <ip>"
        # The job lives on without its host's sshd, ends, and the host comes back.
        gate.touch()
        until(lambda: (d / "exit_code").exists(), 10, "the job to end")
        h.restart()
        until(lambda: watches.status()[host.address] == "live", 15, "live again")
        assert ended(watches) == {("wf-done", 1, "exited", 0), ("wf-1", 2, "exited", 5)}


def test_a_killed_loop_is_restarted_on_the_same_connection(
    tmp_path: Path, hosts: SSHHosts, nodes: Callable[[SSHHost, SSHHost], Node]
):
    h = hosts.add_loopback()
    host = ssh_host(hosts, h)
    node = nodes(host, host)
    d = node.start(1, "sleep 60")
    pid_of(d)
    logins = hosts.logins(h)
    with HostWatches(Connections(tmp_path / "known_hosts")) as watches:
        watches.sync([host])
        until(lambda: watches.status()[host.address] == "live", 10, "live")
        (loop,) = loops(host)
        os.kill(loop, signal.SIGKILL)
        until(lambda: loops(host) and loops(host) != [loop], 5, "a new loop")
        until(lambda: watches.status()[host.address] == "live", 5, "live again")
        kill_job(d)
        until(lambda: ended(watches) == {("wf-1", 1, "killed", None)}, 10, "the job's end")
        assert hosts.logins(h) == logins + 1


def test_a_silent_channel_is_given_up_and_reopened(tmp_path: Path, hosts: SSHHosts):
    h = hosts.add_loopback()
    host = ssh_host(hosts, h)
    logins = hosts.logins(h)
    with HostWatches(Connections(tmp_path / "known_hosts")) as watches:
        watches.sync([host])
        until(lambda: watches.status()[host.address] == "live", 10, "live")
        (loop,) = loops(host)
        os.kill(loop, signal.SIGSTOP)  # a host that hangs: no heartbeat, no end of file
        try:
            until(lambda: set(loops(host)) - {loop}, 12, "a new loop after the silence")
            until(lambda: watches.status()[host.address] == "live", 5, "live again")
        finally:
            os.kill(loop, signal.SIGCONT)
        # Woken, the old loop finds its channel gone and ends.
        until(lambda: loop not in loops(host), 5, "the old loop to end")
        # ~10 s of watching, a channel given up and reopened: one login (the connection
        # was fine, so the new channel runs on it).
        assert hosts.logins(h) == logins + 1


def test_sync_stops_and_forgets_hosts_no_longer_listed(tmp_path: Path, hosts: SSHHosts):
    a = ssh_host(hosts, hosts.add_loopback())
    b = ssh_host(hosts, hosts.add_loopback())
    with HostWatches(Connections(tmp_path / "known_hosts")) as watches:
        watches.sync([a, b])
        until(lambda: set(watches.status().values()) == {"live"}, 10, "both live")
        (loop_a,) = loops(a)
        watches.sync([a])
        assert set(watches.status()) == {a.address}
        until(lambda: not loops(b), 5, "b's loop to end")
        watches.sync([a])  # already watched: left alone
        assert loops(a) == [loop_a]
    until(lambda: not loops(a), 5, "a's loop to end on close")


def test_a_host_never_reached_says_nothing(tmp_path: Path, hosts: SSHHosts):
    h = hosts.add_loopback()
    h.stop()
    host = ssh_host(hosts, h)
    with HostWatches(Connections(tmp_path / "known_hosts"), grace=0.5) as watches:
        watches.sync([host])
        status = until(
            lambda: (s := watches.status()[host.address]) != "connecting" and s, 5, "a try"
        )
        assert status.startswith("down for ") and str(h.port) in status
        time.sleep(1)
        assert watches.observations() == []  # no snapshot: no ending, no unreachable


def test_a_host_claimed_again_is_not_answered_from_the_loops_memory(
    tmp_path: Path, hosts: SSHHosts
):
    host = ssh_host(hosts, hosts.add_loopback())
    root = hosts.node_root(host.ip, host.port)

    def finished(wid: str, code: int) -> None:
        d = root / "jobs/1/run"
        d.mkdir(parents=True)
        (d / "watch").write_text(f"{wid}\nc\n0\n")
        (d / "exit_code").write_text(f"{code}\n")
        hosts.give(root)

    finished("wf-old", 0)
    with HostWatches(Connections(tmp_path / "known_hosts")) as watches:
        watches.sync([host])
        until(lambda: ended(watches) == {("wf-old", 1, "exited", 0)}, 10, "the old job")
        # A new claim clears the jobs and the new cluster's job 1 ends, all within a round.
        shutil.rmtree(root / "jobs")
        finished("wf-new", 7)
        until(lambda: ended(watches) == {("wf-new", 1, "exited", 7)}, 5, "the new job")
