"""`skyloom …`: click commands that parse flags, call the client and render results.

Exit status: 0 success; 1 the work failed; 2 bad input (nothing started); 3 engine
unreachable. Heavy modules (temporalio, pydantic, rich) are imported inside commands so
`skyloom --help` starts in a blink.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from skyloom.client.api import SkyloomClient

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ENGINE = 1, 2, 3


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def run_with_client(fn: Callable[[SkyloomClient], Awaitable[Any]]) -> Any:
    """Connect (starting the embedded engine if needed) and run fn; map errors to exits."""
    import asyncio

    from skyloom.activities.errors import ErrorKind
    from skyloom.client.api import (
        ClusterNotFound,
        JobNotFound,
        Rejected,
        ServiceNotFound,
        SkyloomClient,
        WorkerError,
    )
    from skyloom.client.connection import EngineUnreachable, connect, resolve_target

    async def go() -> Any:
        target = resolve_target()
        return await fn(SkyloomClient(await connect(target), target))

    try:
        return asyncio.run(go())
    except EngineUnreachable as e:
        _fail(str(e), EXIT_ENGINE)
    except (ClusterNotFound, JobNotFound, ServiceNotFound, Rejected) as e:
        _fail(str(e), EXIT_BAD_INPUT)
    except WorkerError as e:
        bad = e.kind in (ErrorKind.INVALID_SPEC.value, ErrorKind.NOT_SUPPORTED.value)
        _fail(str(e), EXIT_BAD_INPUT if bad else EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted (the workflow goes on; see `skyloom status`)", 130)


def _pairs(values: tuple[str, ...], flag: str, from_env: bool = False) -> dict[str, str]:
    import os
    import re

    out = {}
    for v in values:
        key, eq, val = v.partition("=")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise BadInput(f"{flag} {v!r}: expected KEY=VALUE with KEY a variable name")
        if not eq:
            if not from_env or key not in os.environ:
                raise BadInput(f"{flag} {v!r}: expected KEY=VALUE (or KEY set in the environment)")
            val = os.environ[key]
        out[key] = val
    return out


INFRA_HELP = (
    "Where to run: aws, gcp or azure [/region[/zone]], ssh/<pool>, local "
    "(default: the cheapest enabled cloud, else local)."
)


def _output_option(f: Callable) -> Callable:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        help="Output format.",
    )(f)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="skyloom")
def cli() -> None:
    """skyloom: run AI workloads on any infra, on a durable Temporal engine."""


# ---- launch / exec -------------------------------------------------------------------------


@cli.command()
@click.argument("task_yaml", required=False)
@click.option("-c", "--cluster", help="Cluster name (created if it does not exist).")
@click.option(
    "-d", "--detach-run", "detach", is_flag=True, help="Return once the job is submitted."
)
@click.option("--dryrun", is_flag=True, help="Validate and show the plan; start nothing.")
@_output_option
@click.option("-y", "--yes", is_flag=True, help="Skip confirmations.")
@click.option("--infra", help=INFRA_HELP)
@click.option("--gpus", help="Accelerators per node, e.g. A100:8.")
@click.option("--cpus", help="vCPUs per node, e.g. 4 or 4+.")
@click.option("--memory", help="Memory per node in GB, e.g. 32 or 32+.")
@click.option("--num-nodes", type=click.IntRange(min=1), help="Number of nodes.")
@click.option("--use-spot/--no-use-spot", default=None, help="Use spot instances.")
@click.option("--env", "envs", multiple=True, help="KEY=VALUE (or KEY from the environment).")
@click.option("--secret", "secrets", multiple=True, help="KEY=VALUE secret, never displayed.")
@click.option("--workdir", help="Local directory synced to the nodes.")
@click.option(
    "-i",
    "--idle-minutes-to-autostop",
    "idle",
    type=click.IntRange(min=0),
    help="Autostop after idle minutes.",
)
@click.option("--down", is_flag=True, help="Tear down (not stop) when idle; alone: after the job.")
@click.option("--name", "task_name", help="Task name.")
@click.argument("entrypoint", nargs=-1)
def launch(
    task_yaml: str | None,
    cluster: str | None,
    detach: bool,
    dryrun: bool,
    output: str,
    yes: bool,
    infra: str | None,
    gpus: str | None,
    cpus: str | None,
    memory: str | None,
    num_nodes: int | None,
    use_spot: bool | None,
    envs: tuple[str, ...],
    secrets: tuple[str, ...],
    workdir: str | None,
    idle: int | None,
    down: bool,
    task_name: str | None,
    entrypoint: tuple[str, ...],
) -> None:
    """Launch a cluster and run a task on it (TASK_YAML or a command)."""
    from skyloom.cli import commands

    overrides = dict(
        name=task_name,
        infra=infra,
        accelerators=gpus,
        cpus=cpus,
        memory=memory,
        num_nodes=num_nodes,
        use_spot=use_spot,
        workdir=workdir,
    )
    env_pairs, secret_pairs = _pairs(envs, "--env", True), _pairs(secrets, "--secret", True)
    task, base_dir = commands.task_from_args(
        task_yaml, entrypoint, overrides, env_pairs, secret_pairs
    )
    commands.launch(
        task,
        base_dir,
        cluster=cluster,
        detach=detach,
        dryrun=dryrun,
        yes=yes,
        envs=env_pairs,
        secrets=secret_pairs,
        idle=idle,
        down=down,
        given=commands.given_fields(overrides),
        as_json=output == "json",
    )


@cli.command("exec")
@click.argument("cluster")
@click.argument("task_or_command", nargs=-1, required=True)
@click.option("-d", "--detach-run", "detach", is_flag=True, help="Return once the job is queued.")
@click.option("--env", "envs", multiple=True, help="KEY=VALUE (or KEY from the environment).")
@click.option("--secret", "secrets", multiple=True, help="KEY=VALUE secret.")
@click.option(
    "--num-nodes", type=click.IntRange(min=1), help="Nodes to run on (default: the task's)."
)
@click.option("--name", "task_name", help="Job name.")
def exec_(
    cluster: str,
    task_or_command: tuple[str, ...],
    detach: bool,
    envs: tuple[str, ...],
    secrets: tuple[str, ...],
    num_nodes: int | None,
    task_name: str | None,
) -> None:
    """Queue a job on an existing cluster (setup is not run again)."""
    from skyloom.cli import commands

    first = task_or_command[0]
    yaml_path = first if len(task_or_command) == 1 and first.endswith((".yaml", ".yml")) else None
    env_pairs, secret_pairs = _pairs(envs, "--env", True), _pairs(secrets, "--secret", True)
    task, base_dir = commands.task_from_args(
        yaml_path,
        () if yaml_path else task_or_command,
        dict(name=task_name, num_nodes=num_nodes),
        env_pairs,
        secret_pairs,
    )
    commands.exec_job(task, base_dir, cluster, detach=detach, envs=env_pairs, secrets=secret_pairs)


# ---- status / queue / logs / cancel ---------------------------------------------------------


@cli.command()
@click.argument("clusters", nargs=-1)
@click.option("-r", "--refresh", is_flag=True, help="Ask each cluster workflow (not the index).")
@_output_option
def status(clusters: tuple[str, ...], refresh: bool, output: str) -> None:
    """Show clusters."""
    from skyloom.cli import commands

    commands.status(clusters, refresh=refresh, as_json=output == "json")


@cli.command()
@click.argument("cluster")
@click.option("-s", "--skip-finished", is_flag=True, help="Hide finished jobs.")
@_output_option
def queue(cluster: str, skip_finished: bool, output: str) -> None:
    """Show a cluster's job queue."""
    from skyloom.cli import commands

    commands.queue(cluster, skip_finished=skip_finished, as_json=output == "json")


@cli.command()
@click.argument("cluster")
@click.argument("job_id", type=int, required=False)
@click.option("--follow/--no-follow", default=True, help="Keep streaming until the job ends.")
@click.option("--tail", type=int, help="Only the last N lines.")
@click.option("--node-rank", type=int, default=0, help="Which node's output (default 0).")
def logs(cluster: str, job_id: int | None, follow: bool, tail: int | None, node_rank: int) -> None:
    """Show a job's setup and run output (default: the latest job)."""
    from skyloom.cli import commands

    commands.logs(cluster, job_id, follow=follow, tail=tail, rank=node_rank)


@cli.command()
@click.argument("cluster")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("-a", "--all", "all_jobs", is_flag=True, help="Cancel every job of the cluster.")
@click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
def cancel(cluster: str, job_ids: tuple[int, ...], all_jobs: bool, yes: bool) -> None:
    """Cancel jobs on a cluster."""
    from skyloom.cli import commands

    if not job_ids and not all_jobs:
        raise BadInput("give JOB_ID(s) or --all")
    commands.cancel(cluster, list(job_ids), all_jobs)


# ---- lifecycle --------------------------------------------------------------------------------


def _lifecycle_command(verb: str, doc: str) -> Callable[..., Any]:
    @cli.command(verb, help=doc)
    @click.argument("clusters", nargs=-1)
    @click.option("-a", "--all", "all_clusters", is_flag=True, help="Every cluster.")
    @click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
    def command(clusters: tuple[str, ...], all_clusters: bool, yes: bool, **opts: Any) -> None:
        from skyloom.cli import commands

        if not clusters and not all_clusters:
            raise BadInput("give CLUSTER name(s) or --all")
        commands.lifecycle(verb, clusters, all_clusters=all_clusters, yes=yes, **opts)

    return command


_lifecycle_command("stop", "Stop clusters (keep their nodes' disks; jobs are cancelled).")
_lifecycle_command("start", "Start stopped clusters.")
click.option(
    "--purge",
    is_flag=True,
    help="Mark the cluster down even if some nodes cannot be released (e.g. a host gone for "
    "good); what could not be released is named in its status.",
)(_lifecycle_command("down", "Tear clusters down (release every node)."))


@cli.command()
@click.argument("cluster")
@click.option("-i", "--idle-minutes", type=int, help="Idle minutes before stopping (default 5).")
@click.option("--down", is_flag=True, help="Tear down instead of stopping.")
@click.option("--cancel", "cancel_", is_flag=True, help="Turn autostop off.")
def autostop(cluster: str, idle_minutes: int | None, down: bool, cancel_: bool) -> None:
    """Stop (or tear down) a cluster after it has been idle."""
    from skyloom.cli import commands

    commands.autostop(
        cluster, None if cancel_ else (5 if idle_minutes is None else idle_minutes), down
    )


# ---- spec -------------------------------------------------------------------------------------


@cli.command()
@click.argument("task_yamls", nargs=-1, required=True)
def validate(task_yamls: tuple[str, ...]) -> None:
    """Check task YAMLs; exit 2 naming the file and field when one is invalid."""
    from skyloom.spec.loader import SpecError, load_task_file

    bad = 0
    for path in task_yamls:
        try:
            pipeline = load_task_file(path)
        except SpecError as e:
            click.echo(f"Error: {e}", err=True)
            bad += 1
            continue
        n = len(pipeline.tasks)
        click.echo(f"{path}: valid ({n} task{'s' if n > 1 else ''})")
    if bad:
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of a task YAML document."""
    from skyloom.spec.loader import json_schema

    _echo_json(json_schema())


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def check(output: str) -> None:
    """Show which infras are enabled (each SSH pool: which hosts answer) and why not."""
    from skyloom.cli import commands

    commands.check(as_json=output == "json")


@cli.command("show-gpus")
@click.argument("gpu", metavar="[NAME[:COUNT]]", required=False)
@click.option("--infra", help="Only this cloud (and region): aws, gcp/us-central1, ...")
@click.option("--all-regions", is_flag=True, help="Every region, not only the cheapest.")
@_output_option
def show_gpus(gpu: str | None, infra: str | None, all_regions: bool, output: str) -> None:
    """Which GPUs each cloud offers: counts, instance types, on-demand and spot $/hour."""
    from skyloom.cli import catalog

    catalog.show_gpus(gpu, infra, all_regions, as_json=output == "json")


@cli.group("catalog")
def catalog_group() -> None:
    """The clouds' instance types and prices the optimizer plans with."""


@catalog_group.command("refresh")
@click.option(
    "--cloud",
    "clouds",
    multiple=True,
    type=click.Choice(["aws", "gcp", "azure"], case_sensitive=False),
    help="Only this cloud (repeatable; default: every cloud enabled on the worker).",
)
@_output_option
def catalog_refresh(clouds: tuple[str, ...], output: str) -> None:
    """Rebuild the catalog from each cloud's own APIs (run by a worker, which has the
    credentials; a cloud that fails keeps its previous catalog)."""
    from skyloom.cli import catalog

    catalog.refresh(tuple(c.lower() for c in clouds), as_json=output == "json")


# ---- managed jobs -----------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Managed jobs: run to completion on a cluster of their own, recovered on preemption."""


@jobs.command("launch")
@click.argument("task_yaml", required=False)
@click.argument("entrypoint", nargs=-1)
@click.option("-n", "--name", help="Job name (default: the task's or pipeline's name).")
@click.option("-d", "--detach-run", "detach", is_flag=True, help="Return once submitted.")
@click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
@click.option("--infra", help=INFRA_HELP)
@click.option("--gpus", help="Accelerators per node, e.g. A100:8.")
@click.option("--num-nodes", type=click.IntRange(min=1), help="Number of nodes.")
@click.option("--use-spot/--no-use-spot", default=None, help="Use spot instances.")
@click.option(
    "--job-recovery",
    type=click.Choice(["EAGER_NEXT_REGION", "FAILOVER"], case_sensitive=False),
    help="Recovery strategy after a preemption.",
)
@click.option("--env", "envs", multiple=True, help="KEY=VALUE (or KEY from the environment).")
@click.option("--secret", "secrets", multiple=True, help="KEY=VALUE secret, never displayed.")
def jobs_launch(
    task_yaml: str | None,
    entrypoint: tuple[str, ...],
    name: str | None,
    detach: bool,
    yes: bool,
    infra: str | None,
    gpus: str | None,
    num_nodes: int | None,
    use_spot: bool | None,
    job_recovery: str | None,
    envs: tuple[str, ...],
    secrets: tuple[str, ...],
) -> None:
    """Launch a managed job (TASK_YAML, a pipeline YAML, or a command)."""
    from skyloom.cli import jobs as body

    body.launch(
        task_yaml,
        entrypoint,
        name=name,
        detach=detach,
        yes=yes,
        overrides=dict(
            infra=infra,
            accelerators=gpus,
            num_nodes=num_nodes,
            use_spot=use_spot,
            job_recovery=job_recovery.upper() if job_recovery else None,
        ),
        envs=_pairs(envs, "--env", True),
        secrets=_pairs(secrets, "--secret", True),
    )


@jobs.command("queue")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("-s", "--skip-finished", is_flag=True, help="Only jobs that have not ended.")
def jobs_queue(output: str, skip_finished: bool) -> None:
    """Managed jobs with their state, recovery count, cluster and infra."""
    from skyloom.cli import jobs as body

    body.queue(as_json=output == "json", skip_finished=skip_finished)


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("--follow/--no-follow", default=True, help="Stream until the job ends.")
@click.option("--node-rank", type=click.IntRange(min=0), default=0,
              help="Which node's output (default 0).")  # fmt: skip
def jobs_logs(job_id: int, follow: bool, node_rank: int) -> None:
    """A managed job's output, across its recoveries."""
    from skyloom.cli import jobs as body

    body.logs(job_id, follow_=follow, rank=node_rank)


@jobs.command("cancel")
@click.argument("job_ids", type=int, nargs=-1)
@click.option("-a", "--all", "all_jobs", is_flag=True, help="Every managed job not yet ended.")
@click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
def jobs_cancel(job_ids: tuple[int, ...], all_jobs: bool, yes: bool) -> None:
    """Cancel managed jobs; their clusters are torn down."""
    from skyloom.cli import jobs as body

    if not job_ids and not all_jobs:
        raise BadInput("give JOB_ID(s) or --all")
    body.cancel(job_ids, all_jobs=all_jobs, yes=yes)


# ---- serving -----------------------------------------------------------------------------------


@cli.group()
def serve() -> None:
    """Services: replicas of a task behind a load balancer, autoscaled and updated live."""


def _serve_overrides(infra: str | None, use_spot: bool | None) -> dict[str, Any]:
    return dict(infra=infra, use_spot=use_spot)


@serve.command("up")
@click.argument("service_yaml")
@click.option("-n", "--service-name", "name", help="Service name (default: the task's name).")
@click.option("-d", "--detach-run", "detach", is_flag=True, help="Return once it has an endpoint.")
@click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
@click.option("--infra", help=INFRA_HELP)
@click.option("--use-spot/--no-use-spot", default=None, help="Replicas on spot instances.")
@click.option("--env", "envs", multiple=True, help="KEY=VALUE (or KEY from the environment).")
@click.option("--secret", "secrets", multiple=True, help="KEY=VALUE secret, never displayed.")
def serve_up(
    service_yaml: str,
    name: str | None,
    detach: bool,
    yes: bool,
    infra: str | None,
    use_spot: bool | None,
    envs: tuple[str, ...],
    secrets: tuple[str, ...],
) -> None:
    """Start a service from SERVICE_YAML (a task with a `service:` section): print its
    endpoint and wait until a replica is READY."""
    from skyloom.cli import serve as body

    body.up(
        service_yaml,
        name=name,
        detach=detach,
        yes=yes,
        overrides=_serve_overrides(infra, use_spot),
        envs=_pairs(envs, "--env", True),
        secrets=_pairs(secrets, "--secret", True),
    )


@serve.command("status")
@click.argument("services", nargs=-1)
@_output_option
def serve_status(services: tuple[str, ...], output: str) -> None:
    """Services with their endpoint and replicas (all running ones by default)."""
    from skyloom.cli import serve as body

    body.status(services, as_json=output == "json")


@serve.command("update")
@click.argument("service")
@click.argument("service_yaml")
@click.option("--mode", type=click.Choice(["rolling", "blue_green"]), default="rolling",
              help="rolling: old replicas drain as new ones are READY; blue_green: all at once "
              "when every new one is.")  # fmt: skip
@click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
@click.option("--infra", help=INFRA_HELP)
@click.option("--use-spot/--no-use-spot", default=None, help="Replicas on spot instances.")
@click.option("--env", "envs", multiple=True, help="KEY=VALUE (or KEY from the environment).")
@click.option("--secret", "secrets", multiple=True, help="KEY=VALUE secret, never displayed.")
def serve_update(
    service: str,
    service_yaml: str,
    mode: str,
    yes: bool,
    infra: str | None,
    use_spot: bool | None,
    envs: tuple[str, ...],
    secrets: tuple[str, ...],
) -> None:
    """Roll SERVICE to a new version from SERVICE_YAML, with no request dropped."""
    from skyloom.cli import serve as body

    body.update(
        service,
        service_yaml,
        mode=mode,
        yes=yes,
        overrides=_serve_overrides(infra, use_spot),
        envs=_pairs(envs, "--env", True),
        secrets=_pairs(secrets, "--secret", True),
    )


@serve.command("down")
@click.argument("services", nargs=-1)
@click.option("-a", "--all", "all_", is_flag=True, help="Every running service.")
@click.option("-y", "--yes", is_flag=True, help="Skip confirmation.")
def serve_down(services: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Take services down: replicas released, endpoints closed."""
    from skyloom.cli import serve as body

    body.down(services, all_=all_, yes=yes)


@serve.command("logs")
@click.argument("service")
@click.argument("replica_id", type=int, required=False)
@click.option("--load-balancer", is_flag=True, help="What entered and left the rotation.")
@click.option("--follow/--no-follow", default=True, help="Keep streaming.")
def serve_logs(service: str, replica_id: int | None, load_balancer: bool, follow: bool) -> None:
    """A replica's output, or (no REPLICA_ID) the service's own log."""
    from skyloom.cli import serve as body

    body.logs(service, replica_id, load_balancer=load_balancer, follow=follow)


@cli.group()
def debug() -> None:
    """Tools to watch skyloom's recovery at work."""


@debug.command("preempt")
@click.argument("cluster")
def debug_preempt(cluster: str) -> None:
    """Make a local cluster's nodes behave as preempted spot instances."""
    from skyloom.cli import jobs as body

    body.preempt(cluster)


# ---- engine / worker --------------------------------------------------------------------------


@cli.group()
def engine() -> None:
    """The embedded engine (local Temporal server + one worker)."""


@engine.command("start")
@_output_option
def engine_start(output: str) -> None:
    """Start the embedded engine, or whatever part of it is not running."""
    from skyloom.cli import commands

    commands.engine("start", as_json=output == "json")


@engine.command("stop")
@_output_option
def engine_stop(output: str) -> None:
    """Stop the embedded engine (state is kept)."""
    from skyloom.cli import commands

    commands.engine("stop", as_json=output == "json")


@engine.command("status")
@_output_option
def engine_status(output: str) -> None:
    """Show the embedded engine's address, UI and processes."""
    from skyloom.cli import commands

    commands.engine("status", as_json=output == "json")


@cli.command(context_settings={"ignore_unknown_options": True})
def worker() -> None:
    """Run a worker in the foreground (production: any number, on any host)."""
    from skyloom.worker.main import main as worker_main

    worker_main([])


def main() -> None:
    try:
        cli(prog_name="skyloom")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            click.echo(e.code, err=True)
    if "temporalio" in sys.modules:
        # The Temporal client's native runtime threads can crash interpreter finalization
        # (PyGILState_Release while finalizing); everything is flushed, so skip it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
