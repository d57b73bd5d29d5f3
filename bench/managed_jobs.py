"""Managed jobs at scale on one machine, and preemption latency on the local infra.

    python bench/managed_jobs.py [--sizes 100 1000 10000] [--sleep 60 150 900] [--trials 5]

For each N: a throwaway embedded engine (dev server + one worker), N concurrent managed
jobs of `exec sleep S` on the local infra launched through the client API (S per size:
long enough that every job is running before the first ends), then:
  * time until all are RUNNING and until all SUCCEEDED (from the first launch call);
  * peak RSS of the engine (temporal dev server) and of the worker;
  * history events of one finished job, next to S: waiting writes none, so a job's
    history does not grow with how long it runs;
  * CPU seconds of the engine, the worker (and the commands it runs) and everything else
    (the jobs' own processes), while launching and while running to the end.
The jobs `exec` their sleep so each is two processes on this machine (the nodelet's
wrapper and the sleep): 10,000 jobs of three would not fit the default pid_max (32768).
Then, `--trials` times: a spot job is preempted (`debug preempt`'s code path) and the
bench reports how long until the workflow has decided to recover (detection) and until
the job is RUNNING again on a new cluster (recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
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


def cpu_s(pid: int | None) -> tuple[float, float]:
    """(own, waited-for children's) CPU seconds of a process: user + system."""
    if not pid:
        return 0.0, 0.0
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / tick, (int(f[13]) + int(f[14])) / tick


def machine_busy_s() -> float:
    """CPU seconds every core spent not idle since boot (all processes)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server: int | None, worker: int | None) -> dict[str, float]:
    e, _ = cpu_s(server)
    w, wc = cpu_s(worker)
    return {"engine": e, "worker": w, "worker_children": wc, "busy": machine_busy_s()}


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    d = {k: b[k] - a[k] for k in a}
    d["rest"] = d["busy"] - d["engine"] - d["worker"] - d["worker_children"]
    return d


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
            spec=JobSpec(name="sleeper", run=f"exec sleep {sleep}"),
            candidates=[Candidate(infra="local", resources={"use_spot": True})],
        )
        peak = {"engine": rss_mb(server), "worker": rss_mb(worker)}
        gate = asyncio.Semaphore(32)

        async def one(i: int) -> int:
            async with gate:
                return await sky.launch_managed(f"b{i}", [task], RecoveryPolicy())

        async def count(statuses: str) -> int:
            q = f'SkyloomKind="job" AND SkyloomStatus IN ({statuses})'
            return (await sky.client.count_workflows(q)).count

        cpu0 = cpu_snapshot(server, worker)
        t0 = time.perf_counter()
        launching = asyncio.ensure_future(
            sky.launch_managed_many([(f"b{i}", [task], RecoveryPolicy()) for i in range(n)])
        )
        all_running = all_done = submitted = None
        cpu_launch = cpu_run = None
        cpu_mid = cpu0
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
            # Counts, not listings: the bench must not be what loads the engine at large N.
            done = await count('"SUCCEEDED"')
            if all_running is None and await count('"RUNNING", "SUCCEEDED"') >= n:
                all_running = time.perf_counter() - t0
                cpu_launch = cpu_delta(cpu0, cpu_snapshot(server, worker))
                cpu_mid = cpu_snapshot(server, worker)
            if done >= n:
                all_done = time.perf_counter() - t0
                cpu_run = cpu_delta(cpu_mid, cpu_snapshot(server, worker))
                break
            failed = await count('"FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE"')
            if failed or time.perf_counter() - t0 > 4 * 3600:
                raise SystemExit(f"N={n}: gave up: {failed} failed, {done} succeeded")
        ids = launching.result()
        hist = await sky.client.get_workflow_handle(managed_job_workflow_id(ids[0])).fetch_history()
        print(
            f"N={n:>6}: submitted {submitted:6.1f} s, all RUNNING {all_running:7.1f} s, "
            f"all SUCCEEDED {all_done:7.1f} s (jobs sleep {sleep} s); peak RSS engine "
            f"{peak['engine']:.0f} MB, worker {peak['worker']:.0f} MB; "
            f"history of one job: {len(hist.events)} events",
            flush=True,
        )
        for label, c in (("until all RUNNING", cpu_launch), ("RUNNING → SUCCEEDED", cpu_run)):
            assert c is not None
            print(
                f"    CPU s {label}: engine {c['engine']:.0f}, worker {c['worker']:.0f} "
                f"(+{c['worker_children']:.0f} in its subprocesses), everything else "
                f"{c['rest']:.0f} (job processes, bench); machine busy {c['busy']:.0f}",
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
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--sleep", type=int, nargs="+", default=[60, 150])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}", flush=True)
    if len(args.sleep) not in (1, len(args.sizes)):
        ap.error("--sleep: one value, or one per size")
    sleeps = args.sleep * len(args.sizes) if len(args.sleep) == 1 else args.sleep
    for i, (n, sleep) in enumerate(zip(args.sizes, sleeps, strict=True)):
        asyncio.run(run_size(n, sleep, args.trials if i == 0 else 0))


if __name__ == "__main__":
    main()
