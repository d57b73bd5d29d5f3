"""No-op `skyloom exec` round trip on an SSH cluster, next to the same on a local one.

    python bench/ssh_exec.py [--runs 10] [--nodes 2] [--netns]

Starts real sshd hosts (tests/sshd.py: loopback ports, or with --netns as root, network
namespaces with their own addresses), writes a node pool for them, launches one SSH
cluster and one local cluster of the same size on a throwaway embedded engine, then times
`skyloom exec CLUSTER 'echo noop'` from process start until its output line is printed
(the CLI waits for the job to end), alternating the two clusters in one loop.

Note: every SSH command runs the ssh user's login shell, so a slow ~/.bashrc on the hosts
shows up in the SSH figure (measure it: `time bash -ic true` on a host).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli_and_launch import SKY, summary, until_line  # noqa: E402
from tests.sshd import SSHHosts, sshd_missing_reason  # noqa: E402


def bashrc_seconds(home: Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        ["bash", "-c", "source ~/.bashrc >/dev/null 2>&1; true"],
        env={**os.environ, "HOME": str(home)},
        check=False,
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--netns", action="store_true", help="hosts in network namespaces (root)")
    args = ap.parse_args()
    if why := sshd_missing_reason():
        raise SystemExit(f"cannot bench SSH here: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="skyloom-bench-ssh-"))
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env.update(SKYLOOM_HOME=str(home), NO_COLOR="1")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    hosts = SSHHosts(tmp / "sshd")
    print(
        f"logging in as {hosts.user}, whose ~/.bashrc costs "
        f"{bashrc_seconds(hosts.home):.3f} s per SSH command here"
    )
    try:
        add = hosts.add_netns if args.netns else hosts.add_loopback
        for _ in range(args.nodes):
            add()
        (home / "ssh_node_pools.yaml").write_text(yaml.safe_dump({"bench": hosts.pool()}))
        subprocess.run([SKY, "engine", "start"], env=env, check=True, capture_output=True)
        n = str(args.nodes)
        for name, infra in (("b-ssh", "ssh/bench"), ("b-local", "local")):
            subprocess.run(
                [SKY, "launch", "-y", "-c", name, "--infra", infra, "--num-nodes", n, "true"],
                env=env,
                check=True,
                capture_output=True,
            )
        times: dict[str, list[float]] = {"b-ssh": [], "b-local": []}
        for i in range(args.runs + 1):
            for name in times:
                cmd = [SKY, "exec", "--num-nodes", n, name, "echo noop"]
                took = until_line(cmd, "noop", env, tmp)
                if i:  # the first round warms caches and connections
                    times[name].append(took)
        kind = "netns hosts" if args.netns else "loopback sshd hosts"
        print(f"exec no-op, ssh ({args.nodes} {kind}): {summary(times['b-ssh'])}")
        print(f"exec no-op, local ({args.nodes} nodes)       : {summary(times['b-local'])}")
        ratio = statistics.median(times["b-ssh"]) / statistics.median(times["b-local"])
        print(f"  ratio ssh/local: {ratio:.2f}x")
    finally:
        subprocess.run([SKY, "down", "-a", "-y"], env=env, capture_output=True)
        subprocess.run([SKY, "engine", "stop"], env=env, capture_output=True)
        hosts.close()


if __name__ == "__main__":
    main()
