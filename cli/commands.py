"""The bodies of the CLI commands: turn flags into client calls and render the answers."""

from __future__ import annotations

import secrets as _secrets
import sys
from pathlib import Path
from typing import Any

import click
from skyloom.activities.models import ANY_INFRA, Candidate, CheckReport, PlanInput, PlanResult
from skyloom.cli import render
from skyloom.cli.main import EXIT_FAILED, BadInput, _echo_json, run_with_client
from skyloom.client.api import SkyloomClient, WorkerSession, job_spec_from_task
from skyloom.spec.loader import SpecError, load_task_file, parse_task
from skyloom.spec.models import ResourcesBase, Task
from skyloom.workflows.models import AutostopConfig, ClusterStatus, JobStatus, cluster_workflow_id


def task_from_args(
    yaml_path: str | None,
    entrypoint: tuple[str, ...],
    overrides: dict[str, Any],
    envs: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[Task, Path]:
    """The task from a YAML file or an inline command, with command-line overrides applied
    (flags over fields; --env/--secret over the YAML's values, and filling the ones it
    declares without a value)."""
    base_dir = Path.cwd()
    command = " ".join(entrypoint) if entrypoint else None
    if yaml_path and not Path(yaml_path).exists() and not yaml_path.endswith((".yaml", ".yml")):
        command, yaml_path = " ".join([yaml_path, *entrypoint]), None
    if yaml_path:
        if entrypoint:
            raise BadInput(
                f"give either a task YAML or a command, not both ({yaml_path} {command})"
            )
        try:
            pipeline = load_task_file(yaml_path, envs, secrets)
        except SpecError as e:
            raise BadInput(str(e)) from None
        if len(pipeline.tasks) > 1:
            raise BadInput(
                f"{yaml_path}: a pipeline of {len(pipeline.tasks)} tasks runs as a "
                "managed job (`skyloom jobs launch`), not on a cluster"
            )
        task = pipeline.tasks[0]
        base_dir = Path(yaml_path).resolve().parent
    else:
        task = Task(run=command)
    if overrides.get("workdir"):
        base_dir = Path.cwd()
    return apply_overrides(task, overrides, envs, secrets), base_dir


# Task fields each command-line flag sets: an error about the field names the flag.
FLAGS = {
    "resources.infra": "--infra",
    "resources.accelerators": "--gpus",
    "resources.cpus": "--cpus",
    "resources.memory": "--memory",
    "resources.use_spot": "--use-spot",
    "resources.job_recovery": "--job-recovery",
    "num_nodes": "--num-nodes",
    "workdir": "--workdir",
    "name": "--name",
}
_RESOURCE_FLAGS = ("infra", "accelerators", "cpus", "memory", "use_spot", "job_recovery")


def apply_overrides(
    task: Task,
    overrides: dict[str, Any],
    envs: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> Task:
    """The task with command-line flags (infra, accelerators, …) put over its fields. A
    flag's value gets the same checks as the YAML field; an error names the flag. Secrets
    the YAML declares without a value must be given one with --secret."""
    data = task.model_dump(exclude_unset=True, by_alias=True)
    res = data.setdefault("resources", {})
    given = set()
    for key in _RESOURCE_FLAGS:
        if overrides.get(key) is not None:
            if key == "infra":
                for legacy in ("cloud", "region", "zone"):
                    res.pop(legacy, None)
                # A flag's infra applies to every candidate, as SkyPilot's does.
                for alts in ("any_of", "ordered"):
                    for alt in res.get(alts) or []:
                        for legacy in ("infra", "cloud", "region", "zone"):
                            alt.pop(legacy, None)
            res[key] = overrides[key]
            given.add(f"resources.{key}")
    for key in ("name", "num_nodes", "workdir"):
        if overrides.get(key) is not None:
            data[key] = overrides[key]
            given.add(key)
    try:
        out = parse_task(data, "command line", env_overrides=envs, secret_overrides=secrets)
    except SpecError as e:
        raise BadInput(flag_error(e.field, e.message, given) or str(e)) from None
    missing = out.secret_refs()
    if missing:
        raise BadInput(
            f"secrets.{missing[0]}: no value; give one with --secret {missing[0]}=VALUE "
            f"(or --secret {missing[0]} to take it from the environment)"
        )
    return out


def flag_error(field: str | None, message: str, given: set[str] | None = None) -> str | None:
    """`--cpus: ...` when `field` was set by a flag (all flags when `given` is None)."""
    if not field:
        return None
    base = field.split("[", 1)[0]
    flag = FLAGS.get(base)
    if flag is None or (given is not None and base not in given):
        return None
    return f"{flag}: {message}"


def candidates_of(task: Task) -> tuple[list[Candidate], bool]:
    """The places the task may run (its any_of/ordered entries, or its resources) and
    whether they are to be tried in the given order."""
    out = []
    for cand in task.resources.candidates():
        where = infra_of(cand)
        # SkyPilot's internal fields (`_docker_login_config` holds a registry password)
        # never travel: workflow inputs and memos are shown in the web UI.
        internal = {
            name
            for name, field in type(cand).model_fields.items()
            if (field.alias or "").startswith("_")
        }
        resources = cand.model_dump(mode="json", exclude_none=True, exclude=internal)
        out.append(Candidate(infra=where, resources=resources))
    return out, task.resources.ordered is not None


def infra_of(cand: ResourcesBase) -> str:
    """The candidate's infra string: `infra` as given, else the legacy cloud/region/zone
    with `*` for what is left open; nothing at all is `*` (the cheapest enabled cloud)."""
    if cand.infra:
        return cand.infra.strip()
    cloud, region, zone = cand.placement()
    parts = [cloud or ANY_INFRA, region or ANY_INFRA, zone or ANY_INFRA]
    while len(parts) > 1 and parts[-1] == ANY_INFRA:
        parts.pop()
    return "/".join(parts)


def check_name(name: str, flag: str) -> str:
    from skyloom.spec.names import name_problem

    problem = name_problem(name)
    if problem:
        raise BadInput(f"{flag}: {problem}")
    return name


def _check_local_paths(task: Task, base_dir: Path) -> None:
    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else base_dir / path

    if isinstance(task.workdir, str) and not resolve(task.workdir).is_dir():
        raise BadInput(
            f"workdir: {task.workdir!r} is not a directory (resolved to {resolve(task.workdir)})"
        )
    for target, src in task.file_mounts.items():
        if isinstance(src, str) and "://" not in src and not resolve(src).exists():
            raise BadInput(f"file_mounts.{target}: source {src!r} does not exist")


def check_plan(plan: PlanResult, given: set[str]) -> list[str]:
    """Exit 2 when the workers refuse the request (a bad infra, an unknown pool, more
    nodes than the infra has) or no candidate can ever fit; else the notes to show."""
    from skyloom.activities.errors import ErrorKind

    refused = [c for c in plan.candidates if c.error_kind == ErrorKind.INVALID_SPEC.value]
    if refused:
        c = refused[0]
        msg = f"{c.infra}: {c.error}"
        raise BadInput(
            flag_error(c.error_field, msg, given) or f"{c.error_field or 'resources'}: {msg}"
        )
    if all(not c.offers for c in plan.candidates):
        lines = [
            f"  {c.infra}: {c.error_field + ': ' if c.error_field else ''}{c.error or 'no offer'}"
            for c in plan.candidates
        ]
        raise BadInput("no infra can run this task as asked:\n" + "\n".join(lines))
    return [f"{c.infra}: {c.error}" for c in plan.candidates if not c.offers]


def _autostop(task: Task, idle: int | None, down: bool) -> AutostopConfig | None:
    if idle is not None:
        return AutostopConfig(idle_minutes=idle, down=down)
    if down:
        return AutostopConfig(idle_minutes=0, down=True)
    a = task.resources.autostop
    if a is not None and a.enabled:
        return AutostopConfig(idle_minutes=a.idle_minutes, down=a.down)
    return None


def given_fields(overrides: dict[str, Any]) -> set[str]:
    """Task fields set by flags (for naming the flag in an error)."""
    out = set()
    for key, value in overrides.items():
        if value is not None:
            out.add(f"resources.{key}" if key in _RESOURCE_FLAGS else key)
    return out


def launch(
    task: Task,
    base_dir: Path,
    *,
    cluster: str | None,
    detach: bool,
    dryrun: bool,
    yes: bool,
    envs: dict[str, str],
    secrets: dict[str, str],
    idle: int | None,
    down: bool,
    given: set[str] | None = None,
    as_json: bool = False,
) -> None:
    from skyloom.spec.capabilities import gaps

    if as_json and not dryrun:
        raise BadInput("-o json: only with --dryrun (a launch streams its job's output)")

    found = gaps(task)
    blocking = [g for g in found if g.blocking]
    if blocking:
        raise BadInput(
            "not supported yet:\n" + "\n".join(f"  {g.field}: {g.why}" for g in blocking)
        )
    for g in found:
        click.echo(f"Note: {g.field}: {g.why}", err=True)
    _check_local_paths(task, base_dir)
    name = check_name(cluster, "-c/--cluster") if cluster else f"sky-{_secrets.token_hex(2)}"
    candidates, ordered = candidates_of(task)
    autostop = _autostop(task, idle, down)
    job = job_spec_from_task(task, base_dir=base_dir, envs=envs, secrets=secrets)

    async def go(sky: SkyloomClient) -> int:
        # One session for the plan and the output: the workers answer both.
        session = sky.session()
        try:
            return await _launch(sky, session)
        finally:
            await session.close()

    async def _launch(sky: SkyloomClient, session: WorkerSession) -> int:
        existing = await sky.try_describe(name)
        plan = None
        if existing is None or existing.status is ClusterStatus.TERMINATED:
            # The workers say where this can run (and refuse what never can) before
            # anything starts: pools, node limits and GPUs are theirs to know.
            plan = await session.plan(
                PlanInput(cluster=name, num_nodes=task.num_nodes, candidates=candidates)
            )
            for note in check_plan(plan, given or set()):
                click.echo(f"Note: {note}", err=True)
        if as_json:
            rows = [] if plan is None else render.plan_rows(plan, ordered, task.num_nodes)
            _echo_json({"cluster": name, "plan": rows})
            return 0
        render.plan(name, task, autostop, plan, ordered, existing)
        if dryrun:
            click.echo("Dry run: nothing started.")
            return 0
        if not yes and sys.stdin.isatty():
            click.confirm(f"Launch on cluster {name!r}?", default=True, abort=True)
        job_id, created = await sky.launch(
            name,
            candidates=candidates,
            ordered=ordered,
            num_nodes=task.num_nodes,
            job=job,
            autostop=autostop,
        )
        verb = "Launching new cluster" if created else "Using existing cluster"
        click.echo(f"{verb} {name}; job {job_id} submitted.")
        click.echo(f"Workflow: {sky.ui_link(cluster_workflow_id(name))}")
        if detach:
            click.echo(f"Follow with: skyloom logs {name} {job_id}")
            return 0
        from skyloom.cli.logs import stream_job

        final = await stream_job(sky, name, job_id, follow=True, session=session)
        return _report(sky, name, final)

    sys.exit(run_with_client(go))


def _report(sky: SkyloomClient, name: str, job: Any) -> int:
    ok = job.status is JobStatus.SUCCEEDED
    detail = f" ({job.reason})" if job.reason and not ok else ""
    click.echo(f"Job {job.id} {job.status.value}{detail}.", err=not ok)
    click.echo(f"Cluster {name}: {sky.ui_link(cluster_workflow_id(name))}")
    return 0 if ok else EXIT_FAILED


def exec_job(
    task: Task,
    base_dir: Path,
    cluster: str,
    *,
    detach: bool,
    envs: dict[str, str],
    secrets: dict[str, str],
) -> None:
    _check_local_paths(task, base_dir)
    job = job_spec_from_task(
        task, base_dir=base_dir, envs=envs, secrets=secrets, include_setup=False
    )

    async def go(sky: SkyloomClient) -> int:
        job_id = await sky.exec(cluster, job)
        click.echo(f"Job {job_id} queued on {cluster}.")
        if detach:
            click.echo(f"Follow with: skyloom logs {cluster} {job_id}")
            return 0
        from skyloom.cli.logs import stream_job

        return _report(sky, cluster, await stream_job(sky, cluster, job_id, follow=True))

    sys.exit(run_with_client(go))


def status(names: tuple[str, ...], *, refresh: bool, as_json: bool) -> None:
    async def go(sky: SkyloomClient) -> tuple[list[dict], dict[str, int]]:
        rows = [c.to_dict() for c in await sky.list_clusters() if not names or c.name in names]
        if refresh:
            for row in rows:
                d = await sky.describe(row["name"])
                row["status"] = d.status.value
        for row in rows:
            row["ui_url"] = sky.ui_link(row["workflow_id"])
        # As SkyPilot: managed jobs' clusters belong to their jobs; status counts the jobs.
        jobs = {} if as_json or names else await sky.count_managed_in_progress()
        return rows, jobs

    rows, jobs = run_with_client(go)
    if as_json:
        _echo_json(rows)
    else:
        render.clusters(rows)
        render.managed_jobs_summary(jobs)


def queue(cluster: str, *, skip_finished: bool, as_json: bool) -> None:
    async def go(sky: SkyloomClient) -> list[dict]:
        desc = await sky.describe(cluster)
        return [
            j.model_dump(mode="json")
            for j in desc.jobs
            if not (skip_finished and j.status.terminal)
        ]

    jobs = run_with_client(go)
    if as_json:
        _echo_json(jobs)
    else:
        render.jobs(cluster, jobs)


def logs(cluster: str, job_id: int | None, *, follow: bool, tail: int | None, rank: int) -> None:
    from skyloom.cli.logs import stream_job

    async def go(sky: SkyloomClient) -> int:
        final = await stream_job(sky, cluster, job_id, follow=follow, tail=tail, rank=rank)
        if follow and final.status.terminal and final.status is not JobStatus.SUCCEEDED:
            click.echo(f"Job {final.id} {final.status.value}.", err=True)
            return EXIT_FAILED
        return 0

    sys.exit(run_with_client(go))


def cancel(cluster: str, job_ids: list[int], all_jobs: bool) -> None:
    async def go(sky: SkyloomClient) -> list[int]:
        return await sky.cancel(cluster, job_ids, all_jobs)

    done = run_with_client(go)
    click.echo(
        f"Cancelled job(s) {', '.join(map(str, done))} on {cluster}."
        if done
        else f"No job to cancel on {cluster}."
    )


def lifecycle(
    verb: str, names: tuple[str, ...], *, all_clusters: bool, yes: bool, purge: bool = False
) -> None:
    async def targets(sky: SkyloomClient) -> list[str]:
        return list(names) if not all_clusters else [c.name for c in await sky.list_clusters()]

    async def go(sky: SkyloomClient) -> int:
        clusters = await targets(sky)
        if not clusters:
            click.echo("No cluster.")
            return 0
        if verb in ("stop", "down") and not yes and sys.stdin.isatty():
            click.confirm(f"{verb.capitalize()} {', '.join(clusters)}?", default=True, abort=True)
        for name in clusters:
            desc = await (sky.down(name, purge) if verb == "down" else getattr(sky, verb)(name))
            shown = "DOWN" if desc.status is ClusterStatus.TERMINATED else desc.status.value
            click.echo(f"{name}: {shown}  {sky.ui_link(cluster_workflow_id(name))}")
        return 0

    sys.exit(run_with_client(go))


def autostop(cluster: str, idle: int | None, down: bool) -> None:
    async def go(sky: SkyloomClient) -> Any:
        return await sky.autostop(cluster, idle, down)

    desc = run_with_client(go)
    a = desc.autostop
    if a.idle_minutes is None:
        click.echo(f"{cluster}: autostop off.")
    else:
        click.echo(
            f"{cluster}: {'down' if a.down else 'stop'} after {a.idle_minutes} idle minute(s)."
        )


def check(*, as_json: bool) -> None:
    """Asks a worker whether each infra can be used from where the work runs (SSH: every
    host of every pool is probed in parallel there)."""

    async def go(sky: SkyloomClient) -> CheckReport:
        async with sky.session() as session:
            return await session.check()

    report = run_with_client(go)
    from skyloom.spec.capabilities import SUPPORTED_INFRA
    from skyloom.spec.models import CLOUDS

    others = [c for c in CLOUDS if c not in SUPPORTED_INFRA]
    if as_json:
        _echo_json(
            {
                "worker": report.worker,
                "infras": [r.model_dump(mode="json") for r in report.results],
                "not_supported_yet": others,
            }
        )
        return
    click.echo(f"Checked by worker {report.worker}:")
    for r in report.results:
        mark = "enabled" if r.enabled else "disabled"
        click.echo(f"  {r.infra}: {mark}" + (f" ({r.reason})" if r.reason else ""))
        for line in r.details:
            click.echo(f"      {line}")
    click.echo(f"  not supported yet: {', '.join(others)}")


def engine(action: str, *, as_json: bool) -> None:
    from skyloom.client.config import external_target, home
    from skyloom.worker.engine import EmbeddedEngine, EngineError

    ext = external_target()
    if ext is not None:
        info = {
            "address": ext.address,
            "ui_url": ext.ui_url,
            "embedded": False,
            "server_pid": None,
            "worker_pid": None,
        }
        if as_json:
            _echo_json(info)
        else:
            click.echo(
                f"TEMPORAL_ADDRESS={ext.address}: using that engine; the embedded one is "
                "not used (run `skyloom worker` where the work should run)."
            )
        return
    eng = EmbeddedEngine(home())
    try:
        st = {"start": eng.ensure, "stop": eng.stop, "status": eng.status}[action]()
    except EngineError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(3)
    data = {**st.to_dict(), "embedded": True}
    if as_json:
        _echo_json(data)
    else:
        render.engine(data)
    if action == "status" and not st.server_running:
        sys.exit(3)
