"""CLI start-up and launch latency on this machine.

    python bench/cli_and_launch.py [--runs 10]

Reports medians (and min/max) of:
  * `skyloom --help` wall time, next to `python -c pass` (an import-free baseline) run
    the same way in the same loop;
  * launch-to-output of examples/hello.yaml on a fresh cluster with the engine warm: from
    starting `skyloom launch` until the job's first output line is printed;
  * a no-op `skyloom exec` round trip on an existing cluster.
It uses a throwaway SKYLOOM_HOME with its own embedded engine and stops it at the end.
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

BIN = Path(sys.executable).parent
SKY = str(BIN / "skyloom")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def wall(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def until_line(cmd: list[str], needle: str, env: dict[str, str], cwd: Path) -> float:
    """Seconds from start until a line containing needle is printed; waits for the exit."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    seen = None
    for line in p.stdout:
        if seen is None and needle in line:
            seen = time.perf_counter() - t
    if p.wait() != 0 or seen is None:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}) or never printed {needle}")
    return seen


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="skyloom-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env.update(SKYLOOM_HOME=home, NO_COLOR="1")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )

    base, helps = [], []
    for _ in range(args.runs):
        base.append(wall([sys.executable, "-c", "pass"], env))
        helps.append(wall([SKY, "--help"], env))
    print(f"python -c pass     : {summary(base)}")
    print(f"skyloom --help     : {summary(helps)}")
    print(f"  ratio            : {statistics.median(helps) / statistics.median(base):.1f}x")

    t = time.perf_counter()
    subprocess.run([SKY, "engine", "start"], env=env, check=True, capture_output=True)
    print(f"engine start (cold): {time.perf_counter() - t:.2f} s")
    try:
        launches = []
        # One warm-up launch so the engine, worker and OS caches are warm, as for a user.
        cmd = [SKY, "launch", "-y", "-c", "bench-warm", "hello.yaml"]
        until_line(cmd, "hello from node", env, EXAMPLES)
        for i in range(args.runs):
            cmd = [SKY, "launch", "-y", "-c", f"bench-{i}", "hello.yaml"]
            launches.append(until_line(cmd, "hello from node", env, EXAMPLES))
        print(f"launch → output    : {summary(launches)}")
        execs = [
            until_line([SKY, "exec", "bench-warm", "true; echo noop"], "noop", env, EXAMPLES)
            for _ in range(args.runs)
        ]
        print(f"exec no-op         : {summary(execs)}")
    finally:
        subprocess.run([SKY, "down", "-a", "-y"], env=env, capture_output=True)
        subprocess.run([SKY, "engine", "stop"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
