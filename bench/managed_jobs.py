"""Managed jobs at scale on one machine, and preemption latency on the local infra.

    python bench/managed_jobs.py [--sizes 100 1000] [--sleep 60] [--trials 5]

For each N: a throwaway embedded engine (dev server + one worker), N concurrent managed
jobs of `sleep S` on the local infra launched through the client API, then:
  * time until all are RUNNING and until all SUCCEEDED (from the first launch call);
  * peak RSS of the engine (temporal dev server) and of the worker;
  * history events of one finished job, next to S: waiting writes none, so a job's
    history does not grow with how long it runs.
Then, `--trials` times: a spot job is preempted (`debug preempt`'s code path) and the
bench reports how long until the workflow has decided to recover (detection) and until
the job is RUNNING again on a new cluster (recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKY = str(BIN / "skyloom")


def rss_mb(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


async def run_size(n: int, sleep: int, trials: int) -> None:
    from skyloom.client.api import SkyloomClient
    from skyloom.client.connection import connect, resolve_target
    from skyloom.workflows.models import (
        Candidate,
        JobSpec,
        ManagedJobStatus,
        ManagedTask,
        managed_job_workflow_id,
    )
    from skyloom.workflows.recovery import RecoveryPolicy

    home = Path(tempfile.mkdtemp(prefix=f"skyloom-bench-mj{n}-"))
    os.environ["SKYLOOM_HOME"] = str(home)
    env = {**os.environ}
    subprocess.run([SKY, "engine", "start"], env=env, check=True, capture_output=True)
    import json

    st = json.loads(
        subprocess.run(
            [SKY, "engine", "status", "-o", "json"], env=env, check=True, capture_output=True
        ).stdout
    )
    server, worker = st["server_pid"], st["worker_pid"]
    try:
        target = resolve_target()
        sky = SkyloomClient(await connect(target), target)
        task = ManagedTask(
            spec=JobSpec(name="sleeper", run=f"sleep {sleep}"),
            candidates=[Candidate(infra="local", resources={"use_spot": True})],
        )
        peak = {"engine": rss_mb(server), "worker": rss_mb(worker)}
        gate = asyncio.Semaphore(32)

        async def one(i: int) -> int:
            async with gate:
                return await sky.launch_managed(f"b{i}", [task], RecoveryPolicy())

        t0 = time.perf_counter()
        launching = asyncio.ensure_future(
            sky.launch_managed_many([(f"b{i}", [task], RecoveryPolicy()) for i in range(n)])
        )
        all_running = all_done = submitted = None
        while True:
            await asyncio.sleep(1)
            peak = {
                "engine": max(peak["engine"], rss_mb(server)),
                "worker": max(peak["worker"], rss_mb(worker)),
            }
            if not launching.done():
                continue
            if submitted is None:
                submitted = time.perf_counter() - t0
            rows = await sky.list_managed()
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            done = counts.get("SUCCEEDED", 0)
            started = done + counts.get("RUNNING", 0)
            if all_running is None and started >= n:
                all_running = time.perf_counter() - t0
            if done >= n:
                all_done = time.perf_counter() - t0
                break
            if counts.get("FAILED", 0) or time.perf_counter() - t0 > 3600:
                raise SystemExit(f"N={n}: gave up: {counts}")
        ids = launching.result()
        hist = await sky.client.get_workflow_handle(managed_job_workflow_id(ids[0])).fetch_history()
        print(
            f"N={n:>6}: submitted {submitted:6.1f} s, all RUNNING {all_running:7.1f} s, "
            f"all SUCCEEDED {all_done:7.1f} s (jobs sleep {sleep} s); peak RSS engine "
            f"{peak['engine']:.0f} MB, worker {peak['worker']:.0f} MB; "
            f"history of one job: {len(hist.events)} events",
            flush=True,
        )
        if trials:
            from skyloom.activities.providers.local import LocalProvider

            local = LocalProvider(home / "local")
            detect, recover = [], []
            for _ in range(trials):
                (job,) = await asyncio.gather(one(-1))
                while (v := await sky.describe_managed(job)).status is not ManagedJobStatus.RUNNING:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1)
                t = time.perf_counter()
                local.preempt(v.cluster or "")
                while (await sky.describe_managed(job)).recovery_count < 1:
                    await asyncio.sleep(0.05)
                detect.append(time.perf_counter() - t)
                while (w := await sky.describe_managed(job)).status is not ManagedJobStatus.RUNNING:
                    await asyncio.sleep(0.05)
                recover.append(time.perf_counter() - t)
                assert w.cluster != v.cluster
                await sky.cancel_managed(job)
            print(
                f"preemption → recovery decided: median {statistics.median(detect):.2f} s "
                f"(max {max(detect):.2f}); → RUNNING on a new cluster: median "
                f"{statistics.median(recover):.2f} s (max {max(recover):.2f}); {trials} trials",
                flush=True,
            )
    finally:
        subprocess.run([SKY, "engine", "stop"], env=env, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--sleep", type=int, default=60)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}", flush=True)
    for i, n in enumerate(args.sizes):
        asyncio.run(run_size(n, args.sleep, args.trials if i == 0 else 0))


if __name__ == "__main__":
    main()
