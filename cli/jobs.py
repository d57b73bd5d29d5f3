"""The bodies of `skyloom jobs …` (managed jobs) and `skyloom debug preempt`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from skyloom.activities.models import ClusterHandle, NodeInfo, Phase, PlanInput
from skyloom.cli import render
from skyloom.cli.commands import (
    _check_local_paths,
    apply_overrides,
    candidates_of,
    check_name,
    check_plan,
    given_fields,
)
from skyloom.cli.logs import WAIT_SECONDS, LogReader, until_done
from skyloom.cli.main import EXIT_FAILED, BadInput, _echo_json, run_with_client
from skyloom.client.api import SkyloomClient, WorkerSession, job_spec_from_task
from skyloom.spec.loader import SpecError, load_task_file
from skyloom.spec.models import Task
from skyloom.workflows.models import (
    MANAGED_JOB_ON_CLUSTER,
    ManagedJobStatus,
    ManagedJobView,
    ManagedTask,
    managed_job_workflow_id,
)
from skyloom.workflows.policies import failover_table
from skyloom.workflows.recovery import RecoveryPolicy, Strategy

POLL_SECONDS = 0.5


def load(
    yaml_path: str | None,
    entrypoint: tuple[str, ...],
    overrides: dict[str, Any],
    envs: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[str | None, list[Task], Path]:
    """(pipeline name, tasks, base dir) from a YAML (one task or a pipeline) or a command."""
    if yaml_path and not Path(yaml_path).exists() and not yaml_path.endswith((".yaml", ".yml")):
        entrypoint, yaml_path = (yaml_path, *entrypoint), None
    if yaml_path:
        if entrypoint:
            raise BadInput(f"give either a task YAML or a command, not both ({yaml_path})")
        try:
            pipeline = load_task_file(yaml_path, envs, secrets)
        except SpecError as e:
            raise BadInput(str(e)) from None
        if pipeline.execution == "parallel":
            raise BadInput(
                f"{yaml_path}: execution: parallel (a job group) is not supported yet; "
                "a pipeline without it runs its tasks in order"
            )
        tasks, name = pipeline.tasks, pipeline.name
        base = Path(yaml_path).resolve().parent
    else:
        if not entrypoint:
            raise BadInput("give a task YAML or a command")
        tasks, name, base = [Task(run=" ".join(entrypoint))], None, Path.cwd()
    return name, [apply_overrides(t, overrides, envs, secrets) for t in tasks], base


def _recovery(task: Task) -> RecoveryPolicy:
    jr = task.resources.job_recovery
    if jr is None:
        return RecoveryPolicy()
    return RecoveryPolicy(
        strategy=Strategy(jr.strategy.value) if jr.strategy else Strategy.EAGER_NEXT_REGION,
        max_restarts_on_errors=jr.max_restarts_on_errors,
        recover_on_exit_codes=list(jr.recover_on_exit_codes),
    )


def _managed_task(
    task: Task, base: Path, envs: dict[str, str], secrets: dict[str, str]
) -> ManagedTask:
    from skyloom.spec.capabilities import gaps

    blocking = [g for g in gaps(task) if g.blocking]
    if blocking:
        raise BadInput(
            "not supported yet:\n" + "\n".join(f"  {g.field}: {g.why}" for g in blocking)
        )
    _check_local_paths(task, base)
    candidates, ordered = candidates_of(task)
    spec = job_spec_from_task(task, base_dir=base, envs=envs, secrets=secrets)
    return ManagedTask(spec=spec, candidates=candidates, ordered=ordered)


def launch(
    yaml_path: str | None,
    entrypoint: tuple[str, ...],
    *,
    name: str | None,
    detach: bool,
    yes: bool,
    overrides: dict[str, Any],
    envs: dict[str, str],
    secrets: dict[str, str],
) -> None:
    pipeline_name, tasks, base = load(yaml_path, entrypoint, overrides, envs, secrets)
    managed = [_managed_task(t, base, envs, secrets) for t in tasks]
    if name is not None:
        job_name = check_name(name, "-n/--name")
    else:
        job_name = pipeline_name or tasks[0].name or "managed-job"
        check_name(job_name, "name (of the task, used as the job's; or give -n NAME)")
    recovery = _recovery(tasks[0])
    where = ", ".join(c.infra for c in managed[0].candidates)
    spot = " (spot)" if tasks[0].resources.use_spot else ""
    click.echo(
        f"Managed job {job_name!r}: {len(tasks)} task(s), on {where}{spot}, "
        f"recovery {recovery.strategy.value}"
    )

    async def go(sky: SkyloomClient) -> int:
        session = sky.session()
        try:
            # The workers refuse what can never run (unknown pool, too many nodes) before
            # anything starts; each task is planned as its own cluster would be.
            for i, mt in enumerate(managed):
                plan = await session.plan(
                    PlanInput(
                        cluster=f"job-plan-{i}",
                        num_nodes=mt.spec.num_nodes,
                        candidates=mt.candidates,
                    )
                )
                for note in check_plan(plan, given_fields(overrides)):
                    click.echo(f"Note: {note}", err=True)
        finally:
            await session.close()
        if not yes and sys.stdin.isatty():
            click.confirm("Launch?", default=True, abort=True)
        job_id = await sky.launch_managed(job_name, managed, recovery)
        click.echo(f"Managed job {job_id} submitted.")
        link = sky.ui_link(managed_job_workflow_id(job_id))
        if link:
            click.echo(f"Workflow: {link}")
        if detach:
            return 0
        final = await follow(sky, job_id, follow_logs=True)
        return 0 if final.status.value == "SUCCEEDED" else EXIT_FAILED

    sys.exit(run_with_client(go))


async def follow(
    sky: SkyloomClient, job_id: int, *, follow_logs: bool, rank: int = 0
) -> ManagedJobView:
    """Print the job's output on node `rank` as it comes, attempt after attempt, and its
    state changes, until it ends; then return its last view. Logs are read by workers."""
    session = sky.session()
    try:
        return await _follow(sky, session, job_id, follow_logs, rank)
    finally:
        await session.close()


async def _follow(
    sky: SkyloomClient, session: WorkerSession, job_id: int, follow_logs: bool, rank: int
) -> ManagedJobView:
    reader = LogReader(session)
    out = sys.stdout.buffer
    last_status = None
    attempts_shown: list = []
    followed: str | None = None  # the attempt's cluster whose live log is being followed
    wid = managed_job_workflow_id(job_id)

    async def show(data: bytes) -> None:
        if data:
            out.write(data)
            out.flush()

    async def finish_attempt(cluster: str) -> None:
        """The rest of an attempt that ended, from the copy the worker kept of it (read
        on from where its live log was left)."""
        saved = f"{job_id}/{cluster.rsplit('-', 1)[-1]}"
        for phase in (Phase.SETUP, Phase.RUN):
            await show(await reader.read(cluster, phase, rank=rank, saved=saved))

    while True:
        view = await sky.describe_managed(job_id)
        # Each placement that gave no nodes, as it happens (the failover table).
        for tried in view.launch_attempts:
            if tried not in attempts_shown:
                click.echo(f"(no nodes from {failover_table([tried]).strip()})", err=True)
                attempts_shown.append(tried)
        if view.status != last_status:
            click.echo(f"(job {job_id}: {view.status.value}"
                       + (f", {view.reason}" if view.reason and view.status.terminal else "")
                       + ")", err=True)  # fmt: skip
            last_status = view.status
        handle = view.handle
        live = handle is not None and not view.status.terminal
        if follow_logs and followed is not None and (not live or view.cluster != followed):
            await finish_attempt(followed)
            followed = None
        if follow_logs and live and handle is not None:
            _node(handle, rank, job_id)
            followed = handle.cluster
            # Setup's log while starting; once running, setup's is final: read it once
            # more, then long-poll the run's until the job's state moves on.
            running = view.status is ManagedJobStatus.RUNNING
            for phase in [Phase.SETUP, Phase.RUN] if running else [Phase.SETUP]:
                polling = phase is Phase.RUN or not running
                read = reader.read(
                    handle.cluster,
                    phase,
                    workflow_id=wid,
                    cluster=handle.cluster,
                    job_id=MANAGED_JOB_ON_CLUSTER,
                    rank=rank,
                    wait=WAIT_SECONDS if polling else 0.0,
                )

                async def moved_on(seen: ManagedJobView = view) -> bool:
                    now = await sky.describe_managed(job_id)
                    return now.status is not seen.status or now.cluster != seen.cluster

                data, _ = await until_done(read, moved_on) if polling else (await read, False)
                await show(data or b"")
        if view.status.terminal:
            if follow_logs and followed is None and view.cluster:
                await finish_attempt(view.cluster)
            return view
        await asyncio.sleep(POLL_SECONDS)


def _node(handle: ClusterHandle, rank: int, job_id: int) -> NodeInfo:
    if rank >= len(handle.nodes):
        raise BadInput(f"--node-rank {rank}: job {job_id} runs on {len(handle.nodes)} node(s)")
    return handle.nodes[rank]


def queue(*, as_json: bool, skip_finished: bool) -> None:
    async def go(sky: SkyloomClient) -> list[dict]:
        return await sky.list_managed()

    rows = run_with_client(go)
    if skip_finished:
        rows = [r for r in rows if not ManagedJobStatus(r["status"]).terminal]
    if as_json:
        _echo_json(rows)
    else:
        render.managed_jobs(rows)


def logs(job_id: int, *, follow_: bool, rank: int = 0) -> None:
    async def go(sky: SkyloomClient) -> int:
        view = await sky.describe_managed(job_id)
        if rank >= view.num_nodes:  # a rank it does not have is bad input
            raise BadInput(f"--node-rank {rank}: job {job_id} runs on {view.num_nodes} node(s)")
        if follow_ and not view.status.terminal:
            view = await follow(sky, job_id, follow_logs=True, rank=rank)
        else:
            await _print_saved(sky, job_id, view, rank)
            if not view.status.terminal:
                click.echo(f"(job {job_id} is {view.status.value}; follow it without "
                           "--no-follow)", err=True)  # fmt: skip
        return 0 if not view.status.terminal or view.status.value == "SUCCEEDED" else 1

    sys.exit(run_with_client(go))


async def _print_saved(sky: SkyloomClient, job_id: int, view: ManagedJobView, rank: int) -> None:
    """Every attempt's output the worker kept, then the live attempt's so far."""
    session = sky.session()
    out = sys.stdout.buffer
    try:
        reader = LogReader(session)
        saved = await session.saved_logs(job_id)
        for attempt in saved.attempts:
            for phase in (Phase.SETUP, Phase.RUN):
                at = f"{job_id}/{attempt}"
                out.write(await reader.read(at, phase, rank=rank, saved=at))
        live = view.handle
        if live is not None and not view.status.terminal:
            number = live.cluster.rsplit("-", 1)[-1]
            if not (number.isdigit() and int(number) in saved.attempts):
                for phase in (Phase.SETUP, Phase.RUN):
                    data = await reader.read(
                        live.cluster,
                        phase,
                        workflow_id=managed_job_workflow_id(job_id),
                        cluster=live.cluster,
                        job_id=MANAGED_JOB_ON_CLUSTER,
                        rank=rank,
                    )
                    out.write(data)
        out.flush()
    finally:
        await session.close()


def cancel(job_ids: tuple[int, ...], *, all_jobs: bool, yes: bool) -> None:
    async def go(sky: SkyloomClient) -> int:
        ids = list(job_ids)
        if all_jobs:
            ids = [
                r["id"]
                for r in await sky.list_managed()
                if not ManagedJobStatus(r["status"]).terminal
            ]
        if not ids:
            click.echo("No managed job to cancel.")
            return 0
        if not yes and sys.stdin.isatty():
            click.confirm(f"Cancel managed job(s) {', '.join(map(str, ids))}?", abort=True)
        for job_id in ids:
            if await sky.cancel_managed(job_id):
                click.echo(f"Job {job_id}: cancelling (its clusters are being torn down).")
            else:
                click.echo(f"Job {job_id} has already ended.")
        return 0

    sys.exit(run_with_client(go))


def preempt(cluster: str) -> None:
    """Through a worker: the local infra's nodes are the worker's."""
    check_name(cluster, "CLUSTER")

    async def go(sky: SkyloomClient) -> None:
        session = sky.session()
        try:
            await session.preempt(cluster)
        finally:
            await session.close()

    run_with_client(go)
    click.echo(f"{cluster}: nodes preempted (processes killed; the provider reports them gone).")
