"""Cluster activities: plan placements, provision nodes, sync files, start/kill job
phases, stop, down; and what only a worker can do for a client (read logs, check infra,
simulate a preemption).

Methods on a class holding injected providers: the worker passes real ones, tests pass
fakes. Each method is safe to run twice (a retry after a worker crash), and none waits
for a job: phases are watched by the provider's watcher (activities/watch.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from functools import partial
from pathlib import Path
from typing import TypeVar

from skyloom.activities import catalog as cat
from skyloom.activities import models as m
from skyloom.activities.errors import (
    ErrorKind,
    Where,
    kind_of,
    message_of,
    provider_error,
    where_of,
)
from skyloom.activities.models import (
    ANY_INFRA,
    DESCRIBE,
    Candidate,
    CandidatePlan,
    CheckInput,
    CheckReport,
    ClusterHandle,
    ClusterRef,
    GpuReport,
    KillInput,
    LogChunk,
    LogsInput,
    NodeInfo,
    NodeState,
    Observation,
    ObserveInput,
    Phase,
    PhaseInput,
    PhaseState,
    PlanInput,
    PlanResult,
    PreemptInput,
    ProvisionInput,
    RefreshCatalogInput,
    RefreshCatalogReport,
    SavedLogs,
    SavedLogsInput,
    SaveLogsInput,
    ShowGpusInput,
    SyncInput,
    job_dir,
    log_path,
    workdir_path,
)
from skyloom.activities.providers.base import Provider, base_infra, safe_name
from skyloom.activities.runners import Runner, write_env_file
from skyloom.spec.names import name_problem
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

# Blocking work runs beside the activity thread, which heartbeats this often meanwhile.
_HEARTBEAT_EVERY = 2.0
# How often a log follower's long poll looks at the file.
_LOG_POLL_SECONDS = 0.2

T = TypeVar("T")
X = TypeVar("X")


async def _heartbeating_async(fn: Callable[[], T]) -> T:
    """fn in a thread while this (async) activity heartbeats."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    while True:
        done, _ = await asyncio.wait({task}, timeout=_HEARTBEAT_EVERY)
        if done:
            return task.result()
        activity.heartbeat()


async def _handle_of(workflow_id: str | None, cluster: str | None = None) -> ClusterHandle:
    """A live cluster's nodes, asked of the workflow that owns them (`cluster-<name>`,
    `job-<id>` for a managed job's current cluster, `service-<name>` for one replica's)."""
    kind, _, rest = (workflow_id or "").partition("-")
    valid = (
        (kind in ("cluster", "service") and name_problem(rest) is None)
        or (kind == "job" and rest.isdigit())
    ) and (kind != "service" or cluster is not None)
    if not valid:
        raise provider_error(
            ErrorKind.INVALID_SPEC,
            f"{workflow_id!r} is not a cluster's, a managed job's or a service's workflow id",
            where=Where(field="workflow_id"),
        )
    try:
        desc = await activity.client().get_workflow_handle(workflow_id or "").query(DESCRIBE)
    except RPCError as e:
        raise provider_error(
            ErrorKind.INVALID_SPEC, f"{workflow_id}: {e.message}", where=Where(field="workflow_id")
        ) from None
    handle = desc.get("handle") if isinstance(desc, dict) else None
    if kind == "service" and isinstance(desc, dict):
        replicas = [r for r in desc.get("replicas") or [] if r.get("cluster") == cluster]
        handle = replicas[-1].get("handle") if replicas else None
    if not handle:
        raise provider_error(
            ErrorKind.INVALID_SPEC,
            f"{workflow_id} has no nodes now",
            where=Where(field="workflow_id"),
        )
    return ClusterHandle.model_validate(handle)


def _in_parallel(items: list[X], fn: Callable[[X], T]) -> list[T]:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))


def _heartbeating(fn: Callable[[], T]) -> T:
    """Run fn in a helper thread and heartbeat until it returns (outside an activity: call
    it directly)."""
    if not activity.in_activity():
        return fn()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # In the activity's context: fn may ask whom it works for (activity.info()).
        fut = pool.submit(contextvars.copy_context().run, fn)
        while True:
            try:
                return fut.result(timeout=_HEARTBEAT_EVERY)
            except FuturesTimeout:
                activity.heartbeat()


class Providers:
    """Providers by infra name; `ssh/pool` and `aws/us-east-1` resolve by their head."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        disabled: Mapping[str, str] | None = None,
        catalog: cat.CatalogStore | None = None,
    ) -> None:
        self._by_name = dict(providers)
        # Infras this worker knows but cannot use, and why (no SDK, no credentials, ...).
        self.disabled = dict(disabled or {})
        # The clouds' instance types and prices (the shipped copy unless refreshed).
        self.catalog = catalog or cat.CatalogStore()

    def get(self, infra: str) -> Provider:
        name = base_infra(infra)
        try:
            return self._by_name[name]
        except KeyError:
            why = f": {self.disabled[name]}" if name in self.disabled else ""
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"infra {infra!r} is not enabled on this worker{why} "
                f"(enabled: {', '.join(sorted(self._by_name))})",
                where=Where(infra=infra, field="resources.infra"),
            ) from None

    def clouds(self) -> list[Provider]:
        """The enabled providers that place by catalog offers (the clouds), by name."""
        return [p for p in self.all() if p.priced]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def all(self) -> list[Provider]:
        return [self._by_name[n] for n in self.names()]


def skypilot_env(inp: PhaseInput, node: NodeInfo) -> dict[str, str]:
    """The environment SkyPilot gives a job (or setup) on one node."""
    ips = "\n".join(n.ip for n in inp.handle.nodes[: inp.num_nodes])
    gpus = inp.num_gpus_per_node
    gpus_text = str(int(gpus)) if float(gpus).is_integer() else str(gpus)
    info = {
        "cluster_name": inp.handle.cluster,
        "cloud": inp.handle.infra.split("/")[0],
        "num_nodes": inp.num_nodes,
        "ips": [n.ip for n in inp.handle.nodes[: inp.num_nodes]],
    }
    if inp.phase is Phase.SETUP:
        base = {
            "SKYPILOT_SETUP_NODE_RANK": str(node.rank),
            "SKYPILOT_SETUP_NODE_IPS": ips,
            "SKYPILOT_SETUP_NUM_GPUS_PER_NODE": gpus_text,
        }
    else:
        base = {
            "SKYPILOT_NODE_RANK": str(node.rank),
            "SKYPILOT_NODE_IPS": ips,
            "SKYPILOT_NUM_NODES": str(inp.num_nodes),
            "SKYPILOT_NUM_GPUS_PER_NODE": gpus_text,
        }
    return {
        **base,
        "SKYPILOT_TASK_ID": inp.task_id,
        "SKYPILOT_CLUSTER_INFO": json.dumps(info),
        "SKYLOOM_JOB_ID": str(inp.job_id),
        "SKYLOOM_CWD": workdir_path(node),
    }


def _phase_dir(node: NodeInfo, inp: PhaseInput | KillInput, phase: Phase) -> str:
    return f"{job_dir(node, inp.job_id)}/{phase.value}"


class ClusterActivities:
    def __init__(
        self,
        providers: Providers,
        *,
        sleep: Callable[[float], None] = time.sleep,
        logs_dir: Path | None = None,
        unreachable_grace: float = 60.0,
    ):
        self.providers = providers
        # Where managed jobs' logs are kept once their clusters are gone.
        self.logs_dir = logs_dir
        self._sleep = sleep
        # A node out of reach for this long is gone for the step that needs it.
        self.unreachable_grace = unreachable_grace

    def _runner(self, handle: ClusterHandle, node: NodeInfo) -> Runner:
        return self.providers.get(handle.infra).runner(node)

    def _patiently(self, node: NodeInfo, what: str, fn: Callable[[], T]) -> T:
        """fn, tried again while the node is unreachable (a reboot, a dropped link), and
        given up with a final error naming the node once the grace is over: a step on a
        node gone for good must end, not be retried forever."""
        since = time.monotonic()
        while True:
            try:
                return fn()
            except ApplicationError as e:
                if e.type != ErrorKind.UNREACHABLE.value:
                    raise
                if time.monotonic() - since >= self.unreachable_grace:
                    raise provider_error(
                        ErrorKind.UNREACHABLE,
                        f"node {node.rank} ({node.ip}) unreachable for more than "
                        f"{self.unreachable_grace:.0f}s during {what}: {e.message}",
                        non_retryable=True,
                    ) from None
                self._sleep(min(2.0, self.unreachable_grace / 4 or 0.1))

    def _each_node(self, nodes: list[NodeInfo], fn: Callable[[NodeInfo], object]) -> list:
        """fn on every node at once (one slow host must not serialise the others), while
        this thread heartbeats, so a dead worker's activity is retried within seconds."""
        return _heartbeating(lambda: _in_parallel(nodes, fn))

    # ---- placement and nodes -------------------------------------------------------------

    @activity.defn(name=m.PLAN_LAUNCH.name)
    def plan_launch(self, inp: PlanInput) -> PlanResult:
        """Each candidate's offers, or why it can never be placed (no side effects)."""
        safe_name(inp.cluster)

        def plan(i: int) -> CandidatePlan:
            cand = inp.candidates[i]
            out = CandidatePlan(candidate=i, infra=cand.infra)
            try:
                if base_infra(cand.infra) == ANY_INFRA:
                    out.offers = self._any_offers(cand, inp.num_nodes)
                else:
                    provider = self.providers.get(cand.infra)
                    if inp.num_nodes > 1:
                        provider.require(m.Capability.MULTI_NODE, "run more than one node")
                    out.offers = provider.offers(cand.infra, cand.resources, inp.num_nodes)
            except ApplicationError as e:
                out.error_kind = str(e.type or ErrorKind.INVALID_SPEC.value)
                out.error = e.message
                out.error_field = where_of(e).field
            return out

        indexes = list(range(len(inp.candidates)))
        return PlanResult(candidates=_heartbeating(lambda: _in_parallel(indexes, plan)))

    def _any_offers(self, cand: Candidate, num_nodes: int) -> list[m.Offer]:
        """Offers of every enabled cloud for `*` (or `*/region[/zone]`), cheapest first;
        with no cloud enabled, the local machine's (only for a plain `*`)."""
        rest = cand.infra.split("/", 1)[1] if "/" in cand.infra else ""
        clouds = self.providers.clouds()
        if not clouds:
            if rest:
                raise provider_error(
                    ErrorKind.INVALID_SPEC,
                    f"infra {cand.infra!r}: no cloud is enabled on this worker"
                    + "".join(f"; {n}: {why}" for n, why in self.providers.disabled.items()),
                    where=Where(infra=cand.infra, field="resources.infra"),
                )
            return self.providers.get("local").offers("local", cand.resources, num_nodes)
        found: list[m.Offer] = []
        errors: list[ApplicationError] = []
        for p in clouds:
            try:
                where = "/".join(x for x in (p.name, rest) if x)
                found += p.offers(where, cand.resources, num_nodes)
            except ApplicationError as e:
                errors.append(e)
        if not found and errors:
            # Every cloud refused (a region none of them has, an accelerator none sells).
            first = errors[0]
            raise provider_error(
                kind_of(first) or ErrorKind.INVALID_SPEC,
                "; ".join(e.message for e in errors),
                where=where_of(first),
            )
        return sorted(found, key=lambda o: o.price_per_hour)

    @activity.defn(name=m.PROVISION.name)
    def provision(self, inp: ProvisionInput) -> ClusterHandle:
        return _heartbeating(lambda: self.providers.get(inp.infra).create(inp))

    @activity.defn(name=m.DESCRIBE_NODES.name)
    def describe_nodes(self, ref: ClusterRef) -> ClusterHandle:
        """The handle with each node's state as the provider sees it now."""
        assert ref.handle is not None, "describe needs the handle of a created cluster"
        handle = ref.handle
        nodes = _heartbeating(lambda: self.providers.get(handle.infra).describe_nodes(handle))
        return handle.model_copy(update={"nodes": nodes})

    @activity.defn(name=m.STOP_NODES.name)
    def stop_nodes(self, ref: ClusterRef) -> None:
        provider = self.providers.get(ref.infra)
        provider.require(m.Capability.STOP, "stop nodes")
        if ref.handle is not None:
            handle = ref.handle
            _heartbeating(lambda: provider.stop(handle))

    @activity.defn(name=m.START_NODES.name)
    def start_nodes(self, ref: ClusterRef) -> ClusterHandle:
        assert ref.handle is not None, "start needs the handle of a launched cluster"
        handle = ref.handle
        return _heartbeating(lambda: self.providers.get(ref.infra).start(handle))

    @activity.defn(name=m.TERMINATE_NODES.name)
    def terminate_nodes(self, ref: ClusterRef) -> None:
        _heartbeating(lambda: self.providers.get(ref.infra).terminate(ref))

    # ---- jobs on nodes -------------------------------------------------------------------

    @activity.defn(name=m.SYNC_FILES.name)
    def sync_files(self, inp: SyncInput) -> None:
        sources = ([inp.workdir] if inp.workdir else []) + list(inp.file_mounts.values())
        for src in sources:
            if not Path(src).expanduser().exists():
                raise provider_error(
                    ErrorKind.INVALID_SPEC,
                    f"{src} does not exist on the worker ({socket.gethostname()}): local "
                    "files are read where the worker runs; a CLI on another machine cannot "
                    "send its own files yet",
                    where=Where(field="workdir" if src == inp.workdir else "file_mounts"),
                )

        def sync(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            # Without a workdir the job still runs in an (empty) one: the nodelet makes it.
            if inp.workdir:
                runner.sync_dir(inp.workdir, workdir_path(node))
            for target, source in inp.file_mounts.items():
                # A relative target lands under the node's workdir, as SkyPilot's does.
                where = (
                    target if target.startswith(("/", "~")) else f"{workdir_path(node)}/{target}"
                )
                runner.sync_dir(source, where)

        self._each_node(inp.handle.nodes, sync)

    @activity.defn(name=m.START_PHASE.name)
    def start_phase(self, inp: PhaseInput) -> None:
        """Write the phase's files and start it detached on each node (once per node).
        Its ending is reported by the provider's watcher to `inp.notify`."""

        def start(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            d = _phase_dir(node, inp, inp.phase)
            env = {**inp.envs, **inp.secrets, **skypilot_env(inp, node)}
            # Rewriting cmd.sh/env before the claim is harmless: the claim decides who runs.
            files = {
                f"{d}/cmd.sh": (inp.command + "\n", 0o700),
                f"{d}/env": (write_env_file(env), 0o600),
            }
            if inp.notify:
                # Line 1: whom to tell; then which cluster and rank this node is to it, and
                # the cluster's owner (a later namesake's endings are not this one's).
                owner = inp.handle.owner or "-"
                watch = f"{inp.notify}\n{inp.handle.cluster}\n{node.rank}\n{owner}\n"
                files[f"{d}/watch"] = (watch, 0o644)
            self._patiently(
                node, f"the start of {inp.phase.value}", lambda: runner.nodelet("start", d, files)
            )

        self._each_node(inp.handle.nodes[: inp.num_nodes], start)

    @activity.defn(name=m.OBSERVE_CLUSTER.name)
    def observe_cluster(self, inp: ObserveInput) -> list[Observation]:
        """One look at a cluster: which nodes the provider reports preempted or gone, how
        the phase ended on each node where it did, and which nodes stayed out of reach
        for the whole grace (the phase cannot go on there)."""
        handle = inp.ref.handle
        if handle is None:
            return []
        provider = self.providers.get(handle.infra)
        states = _heartbeating(lambda: provider.describe(handle))
        out = [
            Observation(cluster=handle.cluster, rank=n.rank, state=NodeState.PREEMPTED)
            for n, state in zip(handle.nodes, states, strict=True)
            if state in (NodeState.PREEMPTED, NodeState.GONE)
        ]
        phase_dir = inp.phase.value

        def look(node: NodeInfo) -> Observation | None:
            seen = dict(cluster=handle.cluster, rank=node.rank, job_id=inp.job_id, phase=inp.phase)
            try:
                status = self._patiently(
                    node,
                    f"a look at {phase_dir}",
                    lambda: provider.runner(node).nodelet(
                        "status", f"{job_dir(node, inp.job_id)}/{phase_dir}"
                    ),
                )
            except ApplicationError as e:
                if e.type != ErrorKind.UNREACHABLE.value:
                    raise
                return Observation(**seen, state=PhaseState.UNREACHABLE, reason=e.message)
            word, _, rest = status.partition(" ")
            if word not in (PhaseState.EXITED, PhaseState.KILLED):
                return None
            code = int(rest) if word == PhaseState.EXITED else None
            return Observation(**seen, state=PhaseState(word), exit_code=code)

        down = {o.rank for o in out}
        live = [n for n in handle.nodes if n.rank not in down]
        out += [o for o in self._each_node(live, look) if o is not None]
        return out

    @activity.defn(name=m.SAVE_LOGS.name)
    def save_logs(self, inp: SaveLogsInput) -> None:
        """Copy setup and run logs of every node to `<logs_dir>/<dest>/` (best effort: an
        unreachable node's log is skipped, never a reason to keep the cluster)."""
        if self.logs_dir is None:
            return
        dest = self.logs_dir / _saved_dir(inp.dest)
        dest.mkdir(parents=True, exist_ok=True)

        def save(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            for phase in (Phase.SETUP, Phase.RUN):
                try:
                    data = runner.read_file(log_path(node, inp.job_id, phase))
                except ApplicationError:
                    return
                if data:
                    (dest / f"{phase.value}-rank{node.rank}.log").write_bytes(data)

        self._each_node(inp.handle.nodes, save)

    @activity.defn(name=m.KILL_JOB.name)
    def kill_job(self, inp: KillInput) -> None:
        """Kill both phases of a job on every node; a job that never started stays unstarted."""

        attempt = activity.info().attempt if activity.in_activity() else 1

        def kill(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            try:
                for phase in (Phase.SETUP, Phase.RUN):
                    runner.nodelet("kill", _phase_dir(node, inp, phase))
            except ApplicationError as e:
                # A node that stays unreachable cannot be killed; after a few tries the
                # kill gives up on it rather than holding the cluster's queue forever.
                if e.type != ErrorKind.UNREACHABLE.value or attempt < 3:
                    raise
                logging.getLogger(__name__).warning(
                    "kill job %s: skipping node %s: %s", inp.job_id, node.rank, e
                )

        self._each_node(inp.handle.nodes, kill)

    # ---- for clients: what only a worker can reach -----------------------------------

    @activity.defn(name=m.READ_LOGS.name)
    async def read_logs(self, inp: LogsInput) -> LogChunk:
        """Bytes of one log from an offset, waiting up to inp.wait_seconds for some (a
        follower's long poll: one call per burst of output, not one per tick). A live
        cluster's nodes come from its own workflow, never from the asker."""
        limit = max(1, inp.max_bytes)
        if inp.saved is not None:
            name = f"{inp.phase.value}-rank{int(inp.rank)}.log"
            path = self._saved_root() / _saved_dir(inp.saved) / name

            def read() -> bytes:
                return _read_local(path, inp.offset, limit + 1)

        else:
            handle = await _handle_of(inp.workflow_id, inp.cluster)
            if inp.cluster is not None and handle.cluster != inp.cluster:
                return LogChunk.of(b"", inp.offset)  # it moved on: the asker will see
            if not 0 <= inp.rank < len(handle.nodes):
                raise provider_error(
                    ErrorKind.INVALID_SPEC,
                    f"node rank {inp.rank}: cluster {handle.cluster} has "
                    f"{len(handle.nodes)} node(s)",
                    where=Where(field="rank"),
                )
            node = handle.nodes[inp.rank]
            runner = self._runner(handle, node)
            remote = log_path(node, inp.job_id, inp.phase)

            def read() -> bytes:
                return runner.read_file(
                    remote, inp.offset, wait_seconds=inp.wait_seconds, limit=limit + 1
                )

        data = await _heartbeating_async(read)
        more = len(data) > limit
        data = data[:limit]
        return LogChunk.of(data, inp.offset + len(data), more)

    @activity.defn(name=m.SAVED_LOGS.name)
    def saved_logs(self, inp: SavedLogsInput) -> SavedLogs:
        root = self._saved_root() / str(int(inp.managed_job_id))
        attempts = sorted(int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit())
        return SavedLogs(attempts=attempts)

    def _saved_root(self) -> Path:
        if self.logs_dir is None:
            raise provider_error(ErrorKind.NOT_SUPPORTED, "this worker keeps no job logs")
        return self.logs_dir

    @activity.defn(name=m.CHECK_INFRA.name)
    def check_infra(self, inp: CheckInput) -> CheckReport:
        """Whether each infra can be used from this worker (SSH: every host probed)."""
        results = _heartbeating(lambda: [r for p in self.providers.all() for r in _safe_check(p)])
        results += [
            m.CheckResult(infra=name, enabled=False, reason=why)
            for name, why in sorted(self.providers.disabled.items())
        ]
        return CheckReport(worker=f"{socket.gethostname()} (pid {os.getpid()})", results=results)

    @activity.defn(name=m.SHOW_GPUS.name)
    def show_gpus(self, inp: ShowGpusInput) -> GpuReport:
        """Which GPUs each cloud sells, where and for how much, from this worker's catalog."""
        cloud, region = None, None
        if inp.infra:
            parts = [p.strip() for p in inp.infra.strip("/").split("/")]
            cloud = parts[0].lower()
            region = parts[1] if len(parts) > 1 and parts[1] != "*" else None
            if cloud not in cat.CLOUDS or len(parts) > 2:
                raise provider_error(
                    ErrorKind.INVALID_SPEC,
                    f"--infra {inp.infra!r}: expected CLOUD[/REGION] with CLOUD one of "
                    f"{', '.join(cat.CLOUDS)}",
                    where=Where(field="infra"),
                )
        catalog = self.providers.catalog.get()
        if region is not None and region not in catalog.regions(cloud or ""):
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"--infra {inp.infra!r}: {cloud} has no region {region!r} in the catalog",
                where=Where(field="infra"),
            )
        enabled = [p.name for p in self.providers.clouds()]
        rows = cat.gpu_rows(
            catalog,
            name=inp.name,
            count=inp.count,
            cloud=cloud,
            region=region,
            all_regions=inp.all_regions,
        )
        return GpuReport(
            rows=[
                m.GpuOffer(
                    accelerator=r.accelerator,
                    count=r.count,
                    infra=f"{r.cloud}/{r.region}",
                    instance_type=r.instance_type,
                    vcpus=r.vcpus if r.instance_type else None,
                    memory_gb=r.memory_gb if r.instance_type else None,
                    price_per_hour=r.price,
                    spot_price_per_hour=r.spot_price,
                    enabled=r.cloud in enabled,
                )
                for r in rows
            ],
            known=cat.accelerator_names(catalog),
            enabled=enabled,
            about=catalog.about,
        )

    @activity.defn(name=m.REFRESH_CATALOG.name)
    def refresh_catalog(self, inp: RefreshCatalogInput) -> RefreshCatalogReport:
        """Rebuild each asked cloud's catalog from its own APIs into the worker's
        catalog directory (the providers read it at their next plan)."""
        from skyloom.activities.catalog import refresh

        dest = self.providers.catalog.override
        if dest is None:
            raise provider_error(ErrorKind.NOT_SUPPORTED, "this worker keeps no catalog copy")
        names = inp.clouds or [p.name for p in self.providers.clouds()]
        if not names:
            why = "; ".join(f"{c}: {r}" for c, r in sorted(self.providers.disabled.items()))
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                "no cloud is enabled on this worker" + (f" ({why})" if why else ""),
                where=Where(field="cloud"),
            )
        results = []
        for name in names:
            if name not in cat.CLOUDS:
                raise provider_error(
                    ErrorKind.INVALID_SPEC,
                    f"--cloud {name!r}: expected one of {', '.join(cat.CLOUDS)}",
                    where=Where(field="cloud"),
                )
            provider = self.providers.get(name)
            api = getattr(provider, "api", None)
            try:
                if api is None:
                    raise NotImplementedError(f"{name} has no catalog to refresh")
                source = api.catalog_source()
                done = _heartbeating(partial(refresh.refresh, name, dest, source))
            except (refresh.RefreshError, NotImplementedError, ValueError, ImportError) as e:
                results.append(m.CatalogRefreshed(cloud=name, error=str(e)))
                continue
            results.append(
                m.CatalogRefreshed(
                    cloud=name, rows=done.rows, regions=done.regions, path=str(done.path)
                )
            )
        return RefreshCatalogReport(
            worker=f"{socket.gethostname()} (pid {os.getpid()})", results=results
        )

    @activity.defn(name=m.PREEMPT_CLUSTER.name)
    def preempt_cluster(self, inp: PreemptInput) -> None:
        provider = self.providers.get(inp.infra)
        provider.preempt(safe_name(inp.cluster))

    def all(self) -> list[Callable]:
        return [
            self.plan_launch,
            self.provision,
            self.describe_nodes,
            self.sync_files,
            self.start_phase,
            self.kill_job,
            self.observe_cluster,
            self.save_logs,
            self.stop_nodes,
            self.start_nodes,
            self.terminate_nodes,
            self.read_logs,
            self.saved_logs,
            self.check_infra,
            self.preempt_cluster,
            self.show_gpus,
            self.refresh_catalog,
        ]


def _saved_dir(dest: str) -> Path:
    """`<managed job id>/<attempt>`, checked: it is joined into a path on the worker."""
    parts = dest.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise provider_error(
            ErrorKind.INVALID_SPEC, f"saved log {dest!r}: expected <job id>/<attempt>"
        )
    return Path(parts[0]) / parts[1]


def _read_local(path: Path, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def _safe_check(provider: Provider) -> list[m.CheckResult]:
    try:
        return provider.check()
    except Exception as e:  # one infra's failure must not hide the others'
        kind = kind_of(e)
        why = message_of(e) if kind else f"{type(e).__name__}: {e}"
        return [m.CheckResult(infra=provider.name, enabled=False, reason=why)]
