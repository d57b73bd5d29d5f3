"""The bodies of `skyloom serve …`: services of replicas behind a load balancer."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from skyloom.activities.models import Phase, PlanInput, ProbeSpec
from skyloom.cli import render
from skyloom.cli.commands import check_name, check_plan, given_fields
from skyloom.cli.jobs import _managed_task, load
from skyloom.cli.logs import WAIT_SECONDS, LogReader, until_done
from skyloom.cli.main import EXIT_FAILED, BadInput, _echo_json, run_with_client
from skyloom.client.api import SkyloomClient
from skyloom.spec.models import Service, Task
from skyloom.workflows.autoscaler import ScalePolicy
from skyloom.workflows.models import (
    MANAGED_JOB_ON_CLUSTER,
    ServiceSpec,
    ServiceStatus,
    ServiceView,
    service_workflow_id,
)

POLL_SECONDS = 0.5
# What SkyServe does not do either, or what skyloom does not do yet: refused, not ignored.
_UNSUPPORTED = (
    ("tls", "TLS on the endpoint is not supported yet"),
    ("pool", "worker pools are not supported yet"),
    ("workers", "worker pools are not supported yet"),
    ("load_balancer", "load balancer settings are not supported yet"),
)


def service_spec(
    yaml_path: str, overrides: dict[str, Any], envs: dict[str, str], secrets: dict[str, str]
) -> tuple[str | None, ServiceSpec]:
    """(the task's name, the service) from a service YAML; BadInput naming the file and
    the field for anything that cannot be served."""
    _, tasks, base = load(yaml_path, (), overrides, envs, secrets)
    if len(tasks) != 1:
        raise BadInput(f"{yaml_path}: a service is one task, not a pipeline of {len(tasks)}")
    task = tasks[0]
    svc = task.service
    if svc is None:
        raise BadInput(f"{yaml_path}: service: missing; a service YAML needs a `service:` section")

    def bad(field: str, why: str) -> BadInput:
        return BadInput(f"{yaml_path}: service.{field}: {why}")

    for field, why in _UNSUPPORTED:
        value = getattr(svc, field)
        if value is not None and (not hasattr(value, "model_fields_set") or value.model_fields_set):
            raise bad(field, why)
    policy = _policy(svc, bad)
    lb_policy = svc.load_balancing_policy or "least_load"
    if lb_policy not in ("round_robin", "least_load"):
        raise bad("load_balancing_policy", f"{lb_policy} is not supported yet (round_robin or "
                  "least_load)")  # fmt: skip
    port = svc.ports or _task_port(task, yaml_path)
    probe = ProbeSpec()
    rp = svc.readiness_probe
    if rp is not None:
        probe = ProbeSpec(
            path=rp.path,
            post_data=rp.post_data,
            headers=rp.headers or {},
            initial_delay_seconds=float(
                rp.initial_delay_seconds
                if rp.initial_delay_seconds is not None
                else probe.initial_delay_seconds
            ),
            timeout_seconds=float(
                rp.timeout_seconds if rp.timeout_seconds is not None else probe.timeout_seconds
            ),
        )
    managed = _managed_task(task, base, envs, secrets)
    spec = ServiceSpec(
        task=managed,
        port=port,
        probe=probe,
        policy=policy,
        load_balancing_policy=lb_policy,
        spot=bool(task.resources.use_spot),
    )
    problem = spec.problems()
    if problem:
        raise BadInput(f"{yaml_path}: {problem}")
    return task.name, spec


def _policy(svc: Service, bad: Any) -> ScalePolicy:
    rp = svc.replica_policy
    if rp is None:
        return ScalePolicy.fixed(svc.replicas if svc.replicas is not None else 1)
    if isinstance(rp.target_qps_per_replica, dict):
        raise bad("replica_policy.target_qps_per_replica", "per-accelerator targets are not "
                  "supported yet; give one number")  # fmt: skip
    for field in ("num_overprovision", "spot_placer"):
        if getattr(rp, field) is not None:
            raise bad(f"replica_policy.{field}", "not supported yet")
    if rp.max_replicas is not None and rp.max_replicas < rp.min_replicas:
        raise bad("replica_policy.max_replicas", f"expected at least min_replicas "
                  f"({rp.min_replicas}), got {rp.max_replicas}")  # fmt: skip
    fields: dict[str, Any] = {
        "min_replicas": rp.min_replicas,
        "max_replicas": rp.max_replicas,
        "target_qps_per_replica": rp.target_qps_per_replica,
        "upscale_delay_seconds": rp.upscale_delay_seconds,
        "downscale_delay_seconds": rp.downscale_delay_seconds,
        "base_ondemand_fallback_replicas": rp.base_ondemand_fallback_replicas,
        "dynamic_ondemand_fallback": rp.dynamic_ondemand_fallback,
    }
    try:
        return ScalePolicy(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise bad(f"replica_policy{'.' + field if field else ''}", err["msg"]) from None


def _task_port(task: Task, yaml_path: str) -> int:
    ports = task.resources.ports or []
    singles = [int(p) for p in ports if str(p).isdigit()]
    if len(singles) != 1:
        raise BadInput(
            f"{yaml_path}: service.ports: missing; give the replicas' port there or as the "
            f"one port of resources.ports (got {ports or 'none'})"
        )
    return singles[0]


def _service_name(name: str | None, task_name: str | None, yaml_path: str) -> str:
    if name is not None:
        return check_name(name, "-n/--name")
    if task_name:
        return check_name(task_name, "name (of the task, used as the service's; or give -n)")
    stem = Path(yaml_path).stem
    return check_name(stem, "name (the YAML file's, used as the service's; or give -n)")


async def _check_placeable(sky: SkyloomClient, spec: ServiceSpec, given: set[str]) -> None:
    """The workers refuse what can never run (an unknown pool, a bad infra) before any
    workflow starts."""
    async with sky.session() as session:
        plan = await session.plan(
            PlanInput(
                cluster="serve-plan",
                num_nodes=spec.task.spec.num_nodes,
                candidates=spec.task.candidates,
            )
        )
    for note in check_plan(plan, given):
        click.echo(f"Note: {note}", err=True)


def up(
    yaml_path: str,
    *,
    name: str | None,
    detach: bool,
    yes: bool,
    overrides: dict[str, Any],
    envs: dict[str, str],
    secrets: dict[str, str],
) -> None:
    task_name, spec = service_spec(yaml_path, overrides, envs, secrets)
    service = _service_name(name, task_name, yaml_path)
    where = ", ".join(c.infra for c in spec.task.candidates)
    pol = spec.policy
    count = (
        f"{pol.min_replicas}-{pol.max_replicas} replicas (autoscaling)"
        if pol.target_qps_per_replica is not None
        else f"{pol.min_replicas} replica(s)"
    )
    click.echo(
        f"Service {service!r}: {count} on {where}{' (spot)' if spec.spot else ''}, port "
        f"{spec.port}, {spec.load_balancing_policy}"
    )

    async def go(sky: SkyloomClient) -> int:
        await _check_placeable(sky, spec, given_fields(overrides))
        if not yes and sys.stdin.isatty():
            click.confirm("Start the service?", default=True, abort=True)
        wid = await sky.serve_up(service, spec)
        link = sky.ui_link(wid)
        if link:
            click.echo(f"Workflow: {link}")
        view = await _until(sky, service, lambda v: v.endpoint is not None or _over(v))
        if view.endpoint:
            click.echo(f"Endpoint: {view.endpoint}")
        if detach:
            return 0
        click.echo("Waiting for the first replica to be READY (Ctrl-C stops waiting; the "
                   "service stays up)...")  # fmt: skip
        view = await _until(sky, service, lambda v: v.status is not ServiceStatus.REPLICA_INIT,
                            progress=True)  # fmt: skip
        if view.status is ServiceStatus.READY:
            click.echo(f"Service {service} is READY: curl {view.endpoint}/")
            return 0
        click.echo(f"Service {service} is {view.status.value}: {view.reason or ''}", err=True)
        return EXIT_FAILED

    sys.exit(run_with_client(go))


def _over(view: ServiceView) -> bool:
    return view.status in (
        ServiceStatus.FAILED,
        ServiceStatus.DOWN,
        ServiceStatus.FAILED_CLEANUP,
        ServiceStatus.SHUTTING_DOWN,
    )


async def _until(
    sky: SkyloomClient, name: str, done: Any, *, progress: bool = False
) -> ServiceView:
    shown: set[tuple[int, str]] = set()
    while True:
        view = await sky.describe_service(name)
        if progress:
            for r in view.replicas:
                if (r.id, r.status.value) not in shown:
                    shown.add((r.id, r.status.value))
                    why = f": {r.reason}" if r.reason and r.status.failed else ""
                    click.echo(f"  replica {r.id}: {r.status.value}{why}", err=True)
        if done(view):
            return view
        await asyncio.sleep(POLL_SECONDS)


def status(names: tuple[str, ...], *, as_json: bool) -> None:
    for n in names:
        check_name(n, "SERVICE")

    async def go(sky: SkyloomClient) -> list[ServiceView]:
        return await sky.list_services(list(names))

    views = run_with_client(go)
    if as_json:
        _echo_json([_json(v) for v in views])
    else:
        render.services([_json(v) for v in views])


def _json(v: ServiceView) -> dict[str, Any]:
    return {
        "name": v.name,
        "status": v.status.value,
        "endpoint": v.endpoint,
        "version": v.version,
        "target_replicas": v.target_replicas,
        "qps": v.qps,
        "load_balancing_policy": v.load_balancing_policy,
        "reason": v.reason,
        "replicas": [
            {
                "id": r.id,
                "version": r.version,
                "status": r.status.value,
                "infra": r.infra,
                "spot": r.spot,
                "address": r.address,
                "reason": r.reason,
            }
            for r in v.replicas
        ],
    }


def update(name: str, yaml_path: str, *, mode: str, yes: bool, overrides: dict[str, Any],
           envs: dict[str, str], secrets: dict[str, str]) -> None:  # fmt: skip
    check_name(name, "SERVICE")
    _, spec = service_spec(yaml_path, overrides, envs, secrets)

    async def go(sky: SkyloomClient) -> int:
        await sky.describe_service(name)  # a missing service is bad input, before the rest
        await _check_placeable(sky, spec, given_fields(overrides))
        if not yes and sys.stdin.isatty():
            click.confirm(f"Update service {name} ({mode})?", default=True, abort=True)
        version = await sky.update_service(name, spec, mode)
        click.echo(f"Service {name}: version {version} rolling out ({mode}).")
        link = sky.ui_link(service_workflow_id(name))
        if link:
            click.echo(f"Workflow: {link}")
        return 0

    sys.exit(run_with_client(go))


def down(names: tuple[str, ...], *, all_: bool, yes: bool) -> None:
    for n in names:
        check_name(n, "SERVICE")
    if not names and not all_:
        raise BadInput("give SERVICE name(s) or --all")

    async def go(sky: SkyloomClient) -> int:
        targets = list(names) or await sky.service_names()
        if not targets:
            click.echo("No service is up.")
            return 0
        if not yes and sys.stdin.isatty():
            click.confirm(f"Take down {', '.join(targets)}?", default=True, abort=True)
        views = await asyncio.gather(*(sky.down_service(n) for n in targets))
        code = 0
        for v in views:
            click.echo(f"Service {v.name}: {v.status.value}" + (f" ({v.reason})" if v.reason
                       and v.status is ServiceStatus.FAILED_CLEANUP else ""))  # fmt: skip
            if v.status is not ServiceStatus.DOWN:
                code = EXIT_FAILED
        return code

    sys.exit(run_with_client(go))


def logs(name: str, replica_id: int | None, *, load_balancer: bool, follow: bool) -> None:
    """A replica's output (its run command, after its setup), or the service's own log
    (the controller's, in SkyServe's words: launches, readiness, drains, scaling), or the
    load balancer's part of it (what entered and left the rotation, and why)."""
    check_name(name, "SERVICE")
    if replica_id is not None and load_balancer:
        raise BadInput("give either REPLICA_ID or --load-balancer, not both")

    async def go(sky: SkyloomClient) -> int:
        view = await sky.describe_service(name)
        if replica_id is None:
            return await _events(sky, name, view, lb_only=load_balancer, follow=follow)
        return await _replica_log(sky, name, view, replica_id, follow=follow)

    sys.exit(run_with_client(go))


_LB_WORDS = ("READY", "NOT_READY", "draining", "endpoint", "load balancer", "serving loop")


async def _events(
    sky: SkyloomClient, name: str, view: ServiceView, *, lb_only: bool, follow: bool
) -> int:
    last: str | None = None
    while True:
        events = view.events
        # The view keeps the latest events only: go on after the last one printed.
        start = len(events) - events[::-1].index(last) if last in events else 0
        for line in events[start:]:
            if not lb_only or any(w in line for w in _LB_WORDS):
                click.echo(line)
        if events:
            last = events[-1]
        if not follow or _over(view):
            return 0
        await asyncio.sleep(POLL_SECONDS)
        try:
            view = await sky.describe_service(name)
        except LookupError:
            return 0


async def _replica_log(
    sky: SkyloomClient, name: str, view: ServiceView, replica_id: int, *, follow: bool
) -> int:
    replica = next((r for r in view.replicas if r.id == replica_id), None)
    if replica is None:
        ids = ", ".join(str(r.id) for r in view.replicas) or "none"
        raise BadInput(f"REPLICA_ID {replica_id}: service {name} has no such replica "
                       f"(replicas: {ids})")  # fmt: skip
    if replica.handle is None:
        raise BadInput(f"replica {replica_id} is {replica.status.value}: it has no nodes to "
                       "read a log from")  # fmt: skip
    wid = service_workflow_id(name)
    out = sys.stdout.buffer
    async with sky.session() as session:
        reader = LogReader(session)
        for phase in (Phase.SETUP, Phase.RUN):
            out.write(
                await reader.read(
                    replica.cluster,
                    phase,
                    workflow_id=wid,
                    cluster=replica.cluster,
                    job_id=MANAGED_JOB_ON_CLUSTER,
                )
            )
            out.flush()
        while follow:

            async def gone() -> bool:
                now = await sky.describe_service(name)
                r = next((r for r in now.replicas if r.id == replica_id), None)
                return r is None or not r.status.alive

            read = reader.read(
                replica.cluster, Phase.RUN, workflow_id=wid, cluster=replica.cluster,
                job_id=MANAGED_JOB_ON_CLUSTER, wait=WAIT_SECONDS,
            )  # fmt: skip
            chunk, ended = await until_done(read, gone)
            out.write(chunk or b"")
            out.flush()
            if ended:
                click.echo(f"(replica {replica_id} ended)", err=True)
                return 0
    return 0
