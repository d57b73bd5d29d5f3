"""The worker process: registers skyloom's workflows and activities on the task queue.

`skyloom worker` runs it in the foreground (production: as many as needed, anywhere);
the embedded engine runs one detached with `--embedded`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from skyloom.activities.cluster import ClusterActivities
from skyloom.client.config import EngineTarget, external_target, home
from skyloom.client.connection import connect
from skyloom.worker.providers import build_providers
from skyloom.worker.watcher import Watcher
from skyloom.workflows.cluster import ClusterWorkflow
from skyloom.workflows.job_ids import JobIdsWorkflow
from skyloom.workflows.managed_job import ManagedJobWorkflow
from skyloom.workflows.models import TASK_QUEUE
from temporalio.worker import Worker

log = logging.getLogger("skyloom.worker")

# Activities are blocking (subprocess, SSH): they run in threads. Watchers hold one each
# for the life of a job phase.
MAX_ACTIVITIES = 200
# Workflows kept in memory between their tasks. One evicted is rebuilt from its history
# (a sandbox plus a replay) the next time it is woken; a waiting managed job should not
# be, so the default covers 10,000 concurrent jobs. Lower it on a small worker.
MAX_CACHED_WORKFLOWS = int(os.environ.get("SKYLOOM_MAX_CACHED_WORKFLOWS", "12000"))
# Workflow tasks held at once. Workflow code runs under one GIL: holding more only makes
# each wait longer, and one held past its 10 s timeout is retried from the back of the
# queue (10,000 jobs launched at once with the SDK's 100 had jobs stall for minutes).
MAX_WORKFLOW_TASKS = int(os.environ.get("SKYLOOM_MAX_WORKFLOW_TASKS", "20"))


async def run_worker(target: EngineTarget, state: Path, ready_file: Path | None = None) -> None:
    client = await connect(target)
    providers = build_providers(state)
    activities = ClusterActivities(
        providers,
        unreachable_grace=float(os.environ.get("SKYLOOM_UNREACHABLE_GRACE_SECONDS", "60")),
        logs_dir=state / "job_logs",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=MAX_ACTIVITIES) as pool:
        worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[ClusterWorkflow, ManagedJobWorkflow, JobIdsWorkflow],
            activities=activities.all(),
            activity_executor=pool,
            max_concurrent_activities=MAX_ACTIVITIES,
            max_cached_workflows=MAX_CACHED_WORKFLOWS,
            max_concurrent_workflow_tasks=MAX_WORKFLOW_TASKS,
        )
        async with worker:
            log.info("worker polling %s on %s (pid %d)", TASK_QUEUE, target.address, os.getpid())
            if ready_file is not None:
                ready_file.write_text(str(os.getpid()))
            # Every waiting managed job is woken by this one loop, not by its own poller.
            # 0 turns it off on this worker (jobs then rely on their own rare look).
            interval = float(os.environ.get("SKYLOOM_WATCH_SECONDS", "1"))
            watcher = Watcher(client, providers, interval=interval)
            watching = asyncio.create_task(watcher.run(stop)) if interval > 0 else None
            await stop.wait()
            if watching is not None:
                await watching


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="skyloom worker")
    parser.add_argument("--embedded", action="store_true", help="serve the embedded engine")
    parser.add_argument("--ready-file", type=Path, help="written with our pid once polling")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    state = home()
    if args.embedded:
        from skyloom.worker.engine import EmbeddedEngine

        target = EmbeddedEngine(state).target()
    else:
        target = external_target() or _embedded_or_fail(state)
    asyncio.run(run_worker(target, state, args.ready_file))


def _embedded_or_fail(state: Path) -> EngineTarget:
    from skyloom.worker.engine import EmbeddedEngine

    return EmbeddedEngine(state).target()
