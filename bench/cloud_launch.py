"""skyloom's own launch overhead on a cloud, with the cloud's boot time taken away:
moto's EC2 (and the GCP and Azure fakes) on loopback, one real sshd playing every node.

    python bench/cloud_launch.py [--runs 5] [--clouds aws,gcp,azure]

Run by hand, never in CI. Per cloud, medians (min, max) of:
  * launch → output: from starting `skyloom launch` of a fresh cluster until the job's
    first output line, for 1 node and for 4 nodes (instances made, SSH answered, node
    runtime set up, setup and run started, output streamed back);
  * exec no-op on that cluster, until its output;
  * down: `skyloom down -y` until it returns (instances and what was made for them gone).
The issue's goals: ≤ 3 s for 1 node, ≤ 5 s for 4 nodes, exec ≤ 1 s, down ≤ 3 s. For scale
it quotes SkyPilot 0.14.1 on moto + a loopback sshd: 25.5-28.5 s launch → output with its
runtime installed (54-56 s on a bare node), `sky exec` 7.5-10.3 s, `sky down` 9-11 s.
Needs sshd (tests/sshd.py); uses a throwaway SKYLOOM_HOME with its own engine.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli_and_launch import SKY, summary, until_line  # noqa: E402
from tests.fakes.cloud_lab import (  # noqa: E402
    AWS_IMAGE,
    AWS_REGION,
    AZURE_REGION,
    GCP_REGION,
    CloudLab,
    worker_env,
)
from tests.sshd import SSHHosts, sshd_missing_reason  # noqa: E402

INFRA = {"aws": f"aws/{AWS_REGION}", "gcp": f"gcp/{GCP_REGION}", "azure": f"azure/{AZURE_REGION}"}
# Types the catalog has and each fake serves.
INSTANCE = {"aws": "m6i.large", "gcp": "n2-standard-8", "azure": "Standard_D4s_v5"}
TASK = """\
resources:
  infra: {infra}
  instance_type: {instance}
{image}
setup: echo setup-$SKYPILOT_SETUP_NODE_RANK
run: echo out-$SKYPILOT_NODE_RANK
"""


def task_file(tmp: Path, cloud: str) -> Path:
    image = f"  image_id: {AWS_IMAGE}" if cloud == "aws" else ""
    path = tmp / f"{cloud}.yaml"
    path.write_text(TASK.format(infra=INFRA[cloud], instance=INSTANCE[cloud], image=image))
    return path


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clouds", default="aws,gcp,azure")
    args = ap.parse_args()
    clouds = [c for c in args.clouds.split(",") if c]
    if why := sshd_missing_reason():
        raise SystemExit(f"cannot bench here: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="skyloom-bench-cloud-"))
    home = tmp / "home"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server: one line a call
    hosts = SSHHosts(tmp / "sshd")
    sshd = hosts.add_every_loopback()
    lab = CloudLab(ssh_user=hosts.user, ssh_port=sshd.port).start()
    hosts.authorize(lab.prepare_home(home))
    env = worker_env({k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}, lab)
    env.update(SKYLOOM_HOME=str(home), NO_COLOR="1")
    try:
        subprocess.run([SKY, "engine", "start"], env=env, check=True, capture_output=True)
        for cloud in clouds:
            task = str(task_file(tmp, cloud))
            # One warm-up round (worker imports, SDK clients, first SSH connection).
            until_line([SKY, "launch", "-y", "-c", f"w-{cloud}", task], "out-0", env, tmp)
            wall([SKY, "down", "-y", f"w-{cloud}"], env)
            results: dict[str, list[float]] = {"1": [], "4": [], "exec": [], "down": []}
            for i in range(args.runs):
                for nodes in ("1", "4"):
                    name = f"b-{cloud}-{nodes}-{i}"
                    cmd = [SKY, "launch", "-y", "-c", name, "--num-nodes", nodes, task]
                    results[nodes].append(until_line(cmd, "out-0", env, tmp))
                    if nodes == "1":
                        exec_cmd = [SKY, "exec", name, "echo noop"]
                        results["exec"].append(until_line(exec_cmd, "noop", env, tmp))
                    results["down"].append(wall([SKY, "down", "-y", name], env))
            left = lab.leftovers()
            print(f"{cloud} ({INFRA[cloud]}), {args.runs} runs:")
            print(f"  launch → output, 1 node : {summary(results['1'])}")
            print(f"  launch → output, 4 nodes: {summary(results['4'])}")
            print(f"  exec no-op              : {summary(results['exec'])}")
            print(f"  down                    : {summary(results['down'])}")
            print(f"  left in the cloud after down: {left or 'nothing'}")
            ratio = statistics.median(results["4"]) / statistics.median(results["1"])
            print(f"  ratio 4 nodes / 1 node  : {ratio:.2f}x")
    finally:
        subprocess.run([SKY, "down", "-a", "-y"], env=env, capture_output=True)
        subprocess.run([SKY, "engine", "stop"], env=env, capture_output=True)
        lab.close()
        hosts.close()


if __name__ == "__main__":
    main()
