"""The worker process: registers skyloom's workflows and activities on the task queue.

`skyloom worker` runs it in the foreground (production: as many as needed, anywhere);
the embedded engine runs one detached with `--embedded`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from skyloom.activities.cluster import ClusterActivities, Providers
from skyloom.activities.serve.lb import LoadBalancer
from skyloom.activities.serve.replicas import ServeActivities
from skyloom.activities.watch import WatchActivities
from skyloom.client.config import EngineTarget, external_target, home
from skyloom.client.connection import connect
from skyloom.worker.providers import build_providers
from skyloom.workflows import search
from skyloom.workflows.cluster import ClusterWorkflow
from skyloom.workflows.job_ids import JobIdsWorkflow
from skyloom.workflows.managed_job import ManagedJobWorkflow
from skyloom.workflows.models import (
    TASK_QUEUE,
    WATCH_TASK_QUEUE,
    WatcherInput,
    watcher_workflow_id,
)
from skyloom.workflows.service import ServiceWorkflow
from skyloom.workflows.session import SessionWorkflow
from skyloom.workflows.watch import WatcherWorkflow
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.worker import Worker

log = logging.getLogger("skyloom.worker")

# Activities are blocking (subprocess, SSH): they run in threads. None waits for a job
# (phases are watched), so these only bound launches, syncs and log reads in flight.
MAX_ACTIVITIES = 200
# Workflows kept in memory between their tasks. One evicted is rebuilt from its history
# (a sandbox plus a replay) the next time it is woken; a waiting managed job should not
# be, so the default covers 10,000 concurrent jobs. Lower it on a small worker.
MAX_CACHED_WORKFLOWS = int(os.environ.get("SKYLOOM_MAX_CACHED_WORKFLOWS", "12000"))
# Workflow tasks held at once. Workflow code runs under one GIL: holding more only makes
# each wait longer, and one held past its 10 s timeout is retried from the back of the
# queue (10,000 jobs launched at once with the SDK's 100 had jobs stall for minutes).
MAX_WORKFLOW_TASKS = int(os.environ.get("SKYLOOM_MAX_WORKFLOW_TASKS", "20"))


WORKFLOWS = [
    ClusterWorkflow,
    ManagedJobWorkflow,
    ServiceWorkflow,
    JobIdsWorkflow,
    WatcherWorkflow,
    SessionWorkflow,
]


class LBConfig:
    """Where services' load balancer is and how its endpoints are reached, from the
    environment: SKYLOOM_LB_ADMIN (a Caddy's admin API run on its own, as in
    docker-compose; unset: this worker runs one beside itself), SKYLOOM_LB_LISTEN (the
    address endpoints listen on, default 127.0.0.1), SKYLOOM_LB_HOST (the host users are
    told, default the listen address) and SKYLOOM_LB_PORTS (default 30001-30100)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.admin = env.get("SKYLOOM_LB_ADMIN") or None
        self.listen = env.get("SKYLOOM_LB_LISTEN") or "127.0.0.1"
        public = env.get("SKYLOOM_LB_HOST") or self.listen
        self.public_host = socket.gethostname() if public in ("0.0.0.0", "::") else public
        first, _, last = (env.get("SKYLOOM_LB_PORTS") or "30001-30100").partition("-")
        try:
            self.ports = range(int(first), int(last or first) + 1)
        except ValueError:
            raise SystemExit(
                f"SKYLOOM_LB_PORTS={env['SKYLOOM_LB_PORTS']!r}: expected a range like 30001-30100"
            ) from None


async def run_worker(target: EngineTarget, state: Path, ready_file: Path | None = None) -> None:
    client = await connect(target)
    providers = build_providers(state)
    activities = ClusterActivities(
        providers,
        logs_dir=state / "job_logs",
        unreachable_grace=float(os.environ.get("SKYLOOM_UNREACHABLE_GRACE_SECONDS", "60")),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lb_config = LBConfig(dict(os.environ))
    caddy = None
    if lb_config.admin is None:
        from skyloom.worker.lb import CaddyProcess

        caddy = CaddyProcess(state / "lb")
        await caddy.start()
    admin = lb_config.admin or (caddy.admin_url if caddy else "")
    lb = LoadBalancer(admin, listen_host=lb_config.listen, ports=lb_config.ports)
    serving = ServeActivities(lb, lb_config.public_host)
    # The watchers' sweep interval (how late an ending is noticed, on average half of it;
    # slow sweeps stretch it, see Watcher.pause_after); 0: this worker runs no watcher.
    interval = float(os.environ.get("SKYLOOM_WATCH_SECONDS", "0.25"))
    with ThreadPoolExecutor(max_workers=MAX_ACTIVITIES) as pool:
        worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=WORKFLOWS,
            activities=[*activities.all(), *serving.all()],
            activity_executor=pool,
            max_concurrent_activities=MAX_ACTIVITIES,
            max_cached_workflows=MAX_CACHED_WORKFLOWS,
            max_concurrent_workflow_tasks=MAX_WORKFLOW_TASKS,
        )
        workers = [worker]
        if interval > 0:
            watch = WatchActivities(providers, interval=interval)
            workers.append(
                Worker(client, task_queue=WATCH_TASK_QUEUE, activities=[watch.watch_provider])
            )
        try:
            async with contextlib.AsyncExitStack() as stack:
                for w in workers:
                    await stack.enter_async_context(w)
                await start_watchers(client, providers)
                log.info(
                    "worker polling %s on %s (pid %d)", TASK_QUEUE, target.address, os.getpid()
                )
                if ready_file is not None:
                    ready_file.write_text(str(os.getpid()))
                if caddy is not None:
                    # A dead load balancer is started again; the serving loops resync it.
                    await caddy.supervise(stop)
                await stop.wait()
        finally:
            for p in providers.all():
                p.close()
            await lb.aclose()
            if caddy is not None:
                await caddy.close()


async def start_watchers(client: Client, providers: Providers) -> None:
    """Make sure one watcher workflow runs per watch key of every provider. Every worker
    asks at start-up; the engine keeps exactly one of each (a second start finds it)."""
    for provider in providers.all():
        for key in provider.watch_keys():
            await client.start_workflow(
                WatcherWorkflow.run,
                WatcherInput(key=key),
                id=watcher_workflow_id(key),
                task_queue=TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(search.SA_KIND, "watcher"),
                        SearchAttributePair(search.SA_NAME, key),
                    ]
                ),
                static_summary=f"watcher of {key}: tells workflows when their phases end",
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="skyloom worker")
    parser.add_argument("--embedded", action="store_true", help="serve the embedded engine")
    parser.add_argument("--ready-file", type=Path, help="written with our pid once polling")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The Azure SDK logs every HTTP request and response at INFO; its warnings still show.
    logging.getLogger("azure").setLevel(logging.WARNING)
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
