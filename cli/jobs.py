"""The bodies of `skyloom jobs …` (managed jobs) and `skyloom debug preempt`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from skyloom.activities.models import ClusterHandle, NodeInfo, Phase, log_path
from skyloom.cli import render
from skyloom.cli.commands import (
    _check_local_paths,
    _check_ssh_pool,
    _infra,
    apply_overrides,
)
from skyloom.cli.main import EXIT_BAD_INPUT, EXIT_FAILED, BadInput, _echo_json, run_with_client
from skyloom.client.api import SkyloomClient, job_spec_from_task
from skyloom.spec.loader import SpecError, load_task_file
from skyloom.spec.models import Task
from skyloom.workflows.models import (
    MANAGED_JOB_ON_CLUSTER,
    Candidate,
    ManagedJobStatus,
    ManagedJobView,
    ManagedTask,
    managed_job_workflow_id,
)
from skyloom.workflows.recovery import RecoveryPolicy, Strategy

POLL_SECONDS = 0.5


def load(
    yaml_path: str | None, entrypoint: tuple[str, ...], overrides: dict[str, Any]
) -> tuple[str | None, list[Task], Path]:
    """(pipeline name, tasks, base dir) from a YAML (one task or a pipeline) or a command."""
    if yaml_path and not Path(yaml_path).exists() and not yaml_path.endswith((".yaml", ".yml")):
        entrypoint, yaml_path = (yaml_path, *entrypoint), None
    if yaml_path:
        if entrypoint:
            raise BadInput(f"give either a task YAML or a command, not both ({yaml_path})")
        try:
            pipeline = load_task_file(yaml_path)
        except SpecError as e:
            raise BadInput(str(e)) from None
        tasks, name = pipeline.tasks, pipeline.name
        base = Path(yaml_path).resolve().parent
    else:
        if not entrypoint:
            raise BadInput("give a task YAML or a command")
        tasks, name, base = [Task(run=" ".join(entrypoint))], None, Path.cwd()
    return name, [apply_overrides(t, overrides) for t in tasks], base


def _recovery(task: Task) -> RecoveryPolicy:
    jr = task.resources.job_recovery
    if jr is None:
        return RecoveryPolicy()
    return RecoveryPolicy(
        strategy=Strategy(jr.strategy.value) if jr.strategy else Strategy.EAGER_NEXT_REGION,
        max_restarts_on_errors=jr.max_restarts_on_errors,
        recover_on_exit_codes=list(jr.recover_on_exit_codes),
    )


def _managed_task(task: Task, base: Path, envs: dict[str, str], secrets: dict[str, str]):
    from skyloom.spec.capabilities import gaps

    infra = _infra(task)
    blocking = [g for g in gaps(task, infra) if g.blocking]
    if blocking:
        raise BadInput(
            "not supported yet:\n" + "\n".join(f"  {g.field}: {g.why}" for g in blocking)
        )
    _check_local_paths(task, base)
    candidates = []
    for cand in task.resources.candidates():
        cloud, region, _ = cand.placement()
        where = cand.infra or "/".join(x for x in (cloud, region) if x) or "local"
        _check_ssh_pool(where, task)
        candidates.append(
            Candidate(infra=where, resources=cand.model_dump(mode="json", exclude_none=True))
        )
    spec = job_spec_from_task(task, base_dir=base, envs=envs, secrets=secrets)
    return ManagedTask(spec=spec, candidates=candidates)


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
    pipeline_name, tasks, base = load(yaml_path, entrypoint, overrides)
    managed = [_managed_task(t, base, envs, secrets) for t in tasks]
    job_name = name or pipeline_name or tasks[0].name or "managed-job"
    recovery = _recovery(tasks[0])
    where = ", ".join(c.infra for c in managed[0].candidates)
    spot = " (spot)" if tasks[0].resources.use_spot else ""
    click.echo(
        f"Managed job {job_name!r}: {len(tasks)} task(s), on {where}{spot}, "
        f"recovery {recovery.strategy.value}"
    )
    if not yes and sys.stdin.isatty():
        click.confirm("Launch?", default=True, abort=True)

    async def go(sky: SkyloomClient) -> int:
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
    state changes, until it ends; then return its last view."""
    from skyloom.client.config import home
    from skyloom.worker.providers import build_providers
    from temporalio.exceptions import ApplicationError

    providers = build_providers(home())
    out = sys.stdout.buffer
    offsets: dict[tuple[str, str], int] = {}
    last_status = None
    saved = home() / "job_logs" / str(job_id)
    while True:
        view = await sky.describe_managed(job_id)
        if view.status != last_status:
            click.echo(f"(job {job_id}: {view.status.value}"
                       + (f", {view.reason}" if view.reason and view.status.terminal else "")
                       + ")", err=True)  # fmt: skip
            last_status = view.status
        handle = view.handle
        if follow_logs and handle is not None and not view.status.terminal:
            node = _node(handle, rank, job_id)
            runner = providers.get(handle.infra).runner(node)
            for phase in (Phase.SETUP, Phase.RUN):
                key = (handle.cluster, phase.value)
                path = log_path(node, MANAGED_JOB_ON_CLUSTER, phase)
                try:
                    data = await asyncio.to_thread(runner.read_file, path, offsets.get(key, 0))
                except ApplicationError:
                    break
                offsets[key] = offsets.get(key, 0) + len(data)
                if data:
                    out.write(data)
                    out.flush()
        if view.status.terminal:
            # The last attempt's tail, from the copy kept when its cluster went away.
            if follow_logs and view.cluster:
                attempt = view.cluster.rsplit("-", 1)[-1]
                log = saved / attempt / f"run-rank{rank}.log"
                key = (view.cluster, "run")
                if log.exists():
                    data = log.read_bytes()[offsets.get(key, 0) :]
                    out.write(data)
                    out.flush()
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
    from skyloom.client.config import home

    async def go(sky: SkyloomClient) -> int:
        view = await sky.describe_managed(job_id)
        if view.handle is not None:
            _node(view.handle, rank, job_id)  # a rank it does not have is bad input
        if follow_ and not view.status.terminal:
            view = await follow(sky, job_id, follow_logs=True, rank=rank)
        else:
            # Saved logs of every attempt, then the live one if the job still runs.
            root = home() / "job_logs" / str(job_id)
            for attempt in sorted(root.glob("*"), key=lambda p: int(p.name)):
                for log in sorted(attempt.glob(f"*-rank{rank}.log")):
                    sys.stdout.buffer.write(log.read_bytes())
            sys.stdout.flush()
            if not view.status.terminal:
                click.echo(f"(job {job_id} is {view.status.value}; follow it without "
                           "--no-follow)", err=True)  # fmt: skip
        return 0 if not view.status.terminal or view.status.value == "SUCCEEDED" else 1

    sys.exit(run_with_client(go))


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
    from skyloom.client.config import home
    from skyloom.worker.providers import build_providers
    from temporalio.exceptions import ApplicationError

    provider = build_providers(home()).get("local")
    try:
        provider.preempt(cluster)
    except ApplicationError as e:
        click.echo(f"Error: {e.message} (debug preempt works on local-infra clusters)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"{cluster}: nodes preempted (processes killed; the provider reports them gone).")
