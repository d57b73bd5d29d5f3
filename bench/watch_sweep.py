"""What one round of the shared watcher costs on the local infra, by number of jobs.

    python bench/watch_sweep.py [--sizes 1000 10000] [--rounds 10]

Lays out N managed-job clusters on disk the way the local provider and the nodelet do
(node dir, setup ended with exit 0, run going with a live pid and a `watch` file), then
times `LocalProvider.sweep("local")`: the first round (nothing known) and the median of the next
rounds (nothing changed), and a round right after one job in a hundred ended. The live
pid is one `sleep` shared by every job: the bench measures the sweep, not the jobs.
A round costs a stat per directory down to each job and a kill(pid, 0) per phase.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path


def lay_out(root: Path, n: int, pid: int) -> list[Path]:
    runs = []
    for i in range(n):
        job = root / f"job-{i}-1" / "node-0" / "jobs" / "1"
        for phase in ("setup", "run"):
            d = job / phase
            d.mkdir(parents=True)
            (d / "watch").write_text(f"job-{i}\njob-{i}-1\n0\n")
            (d / "pid").write_text(str(pid))
        (job / "setup" / "exit_code").write_text("0")
        runs.append(job / "run")
    return runs


def timed(fn) -> tuple[float, int]:
    t = time.perf_counter()
    found = fn()
    return time.perf_counter() - t, len(found)


def main() -> None:
    from skyloom.activities.providers.local import LocalProvider

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    sleeper = subprocess.Popen(["sleep", "3600"])
    try:
        for n in args.sizes:
            with tempfile.TemporaryDirectory(prefix="skyloom-sweep-") as tmp:
                root = Path(tmp)
                runs = lay_out(root, n, sleeper.pid)
                # One job in a hundred gets a process of its own, to end it later.
                enders = [subprocess.Popen(["sleep", "3600"]) for _ in runs[::100]]
                for d, p in zip(runs[::100], enders, strict=True):
                    (d / "pid").write_text(str(p.pid))
                # Let every directory's mtime age past the provider's "just changed" window.
                time.sleep(2.5)
                provider = LocalProvider(root)
                cold, found = timed(partial(provider.sweep, "local"))
                warm = [timed(partial(provider.sweep, "local"))[0] for _ in range(args.rounds)]
                # Ending as the wrapper does: exit code written, then its process gone.
                for d, p in zip(runs[::100], enders, strict=True):
                    (d / "exit_code").write_text("0")
                    p.kill()
                    p.wait()
                news, found_after = timed(partial(provider.sweep, "local"))
                print(
                    f"N={n:>6}: first round {cold * 1000:7.1f} ms ({found} reports), "
                    f"unchanged round median {statistics.median(warm) * 1000:7.1f} ms, "
                    f"round after {len(runs[::100])} jobs ended {news * 1000:7.1f} ms "
                    f"({found_after} reports)",
                    flush=True,
                )
    finally:
        sleeper.kill()


if __name__ == "__main__":
    main()
