"""The typed programmatic client: what the CLI uses, and what other services can use.

Every call maps to one workflow start, update or query, or one visibility query; nothing
here decides anything about a cluster's lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from skyloom.activities.errors import kind_of, message_of, where_of
from skyloom.activities.models import (
    Candidate,
    CheckInput,
    CheckReport,
    GpuReport,
    LogChunk,
    LogsInput,
    PlanInput,
    PlanResult,
    RefreshCatalogInput,
    RefreshCatalogReport,
    SavedLogs,
    SavedLogsInput,
    ShowGpusInput,
)
from skyloom.client.config import EngineTarget, user
from skyloom.spec.models import Task
from skyloom.workflows import search
from skyloom.workflows.models import (
    ALLOCATE_UPDATE,
    CANCEL_SIGNAL,
    CLOSE_SIGNAL,
    CLUSTER_WORKFLOW,
    DESCRIBE_QUERY,
    JOB_IDS_WORKFLOW,
    JOB_IDS_WORKFLOW_ID,
    MANAGED_JOB_WORKFLOW,
    SERVICE_WORKFLOW,
    SESSION_WORKFLOW,
    TASK_QUEUE,
    AutostopConfig,
    AutostopInput,
    CancelJobsInput,
    CancelJobsResult,
    ClusterDescription,
    ClusterInput,
    ClusterStatus,
    ClusterUpdate,
    DownInput,
    DownServiceInput,
    JobSpec,
    ManagedJobInput,
    ManagedJobStatus,
    ManagedJobView,
    ManagedTask,
    PreemptRequest,
    ServiceInput,
    ServiceSpec,
    ServiceStatus,
    ServiceUpdate,
    ServiceView,
    SessionInput,
    SessionUpdate,
    StartInput,
    StopInput,
    SubmitJobInput,
    SubmitJobResult,
    UpdateServiceInput,
    UpdateServiceResult,
    cluster_workflow_id,
    managed_job_workflow_id,
    service_workflow_id,
)
from skyloom.workflows.recovery import RecoveryPolicy
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

R = TypeVar("R")

# How long a client waits for a worker to take a session's request before saying so.
WORKER_WAIT_SECONDS = 90.0


class ClusterNotFound(LookupError):
    pass


class ServiceNotFound(LookupError):
    pass


class JobNotFound(LookupError):
    pass


class Rejected(ValueError):
    """The workflow refused the request (for example: exec on a stopped cluster)."""


class WorkerError(RuntimeError):
    """A worker could not do what a session asked; `kind` is the activity error's kind
    (ErrorKind value), `field` the input it is about, when known."""

    def __init__(self, message: str, kind: str | None = None, field: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.field = field


class WorkerSession:
    """What only workers can do, asked through the engine: read logs, check infra, plan a
    launch, simulate a preemption. One session workflow per use, started with its first
    request (update-with-start: one round trip) and closed at the end."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.id = f"skyloom-session-{uuid.uuid4().hex[:12]}"
        self.started = False

    async def _ask(self, update: str, arg: object, result_type: type[R]) -> R:
        try:
            if self.started:
                call = self.client.get_workflow_handle(self.id).execute_update(
                    update, arg, result_type=result_type
                )
            else:
                op: WithStartWorkflowOperation = WithStartWorkflowOperation(
                    SESSION_WORKFLOW,
                    SessionInput(),
                    id=self.id,
                    task_queue=TASK_QUEUE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    search_attributes=TypedSearchAttributes(
                        [SearchAttributePair(search.SA_KIND, "session")]
                    ),
                    static_summary=f"client session of {user()}",
                )
                call = self.client.execute_update_with_start_workflow(
                    update, arg, start_workflow_operation=op, result_type=result_type
                )
            # A deadline on this coroutine, not a task around it: a caller that stops
            # waiting (a follower whose job moved on) must leave no task behind.
            async with asyncio.timeout(WORKER_WAIT_SECONDS):
                result = await call
            self.started = True
            return result
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError() from e  # our caller cancelled us
            raise WorkerError(
                f"no worker answered within {WORKER_WAIT_SECONDS:.0f}s (is `skyloom worker` "
                f"running on task queue {TASK_QUEUE!r}?)"
            ) from None
        except WorkflowUpdateFailedError as e:
            cause = e.cause
            raise WorkerError(
                message_of(cause) if cause else str(e),
                str(kind_of(cause)) if cause and kind_of(cause) else None,
                where_of(cause).field if cause else None,
            ) from e

    async def plan(self, inp: PlanInput) -> PlanResult:
        return await self._ask(SessionUpdate.PLAN, inp, PlanResult)

    async def check(self) -> CheckReport:
        return await self._ask(SessionUpdate.CHECK, CheckInput(), CheckReport)

    async def preempt(self, cluster: str, infra: str = "local") -> None:
        await self._ask(
            SessionUpdate.PREEMPT, PreemptRequest(cluster=cluster, infra=infra), type(None)
        )

    async def read_logs(self, inp: LogsInput) -> LogChunk:
        return await self._ask(SessionUpdate.READ_LOGS, inp, LogChunk)

    async def saved_logs(self, managed_job_id: int) -> SavedLogs:
        return await self._ask(
            SessionUpdate.SAVED_LOGS, SavedLogsInput(managed_job_id=managed_job_id), SavedLogs
        )

    async def show_gpus(self, inp: ShowGpusInput) -> GpuReport:
        return await self._ask(SessionUpdate.SHOW_GPUS, inp, GpuReport)

    async def refresh_catalog(self, clouds: list[str]) -> RefreshCatalogReport:
        return await self._ask(
            SessionUpdate.REFRESH_CATALOG,
            RefreshCatalogInput(clouds=clouds),
            RefreshCatalogReport,
        )

    async def close(self) -> None:
        if not self.started:
            return
        # It may have ended on its own (idle): nothing to close then.
        with contextlib.suppress(RPCError):
            await self.client.get_workflow_handle(self.id).signal(CLOSE_SIGNAL)

    async def __aenter__(self) -> WorkerSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class ClusterSummary:
    name: str
    status: str
    infra: str
    num_nodes: int
    user: str
    launched_at: datetime | None
    workflow_id: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "infra": self.infra,
            "num_nodes": self.num_nodes,
            "user": self.user,
            "launched_at": self.launched_at.isoformat() if self.launched_at else None,
            "workflow_id": self.workflow_id,
        }


def job_spec_from_task(
    task: Task,
    *,
    base_dir: Path,
    envs: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    include_setup: bool = True,
    num_nodes: int | None = None,
) -> JobSpec:
    """The job a task asks for, with local paths made absolute (relative to the YAML)."""

    def local(p: str) -> str:
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())

    workdir = task.workdir if isinstance(task.workdir, str) else None
    mounts = {t: local(s) for t, s in task.file_mounts.items() if isinstance(s, str)}
    return JobSpec(
        name=task.name,
        setup=task.setup if include_setup else None,
        run=task.run,
        envs={**task.env_values(), **(envs or {})},
        secrets={**task.secret_values(), **(secrets or {})},
        workdir=local(workdir) if workdir else None,
        file_mounts=mounts,
        num_nodes=num_nodes or task.num_nodes,
        num_gpus_per_node=task.resources.gpus_per_node(),
    )


class SkyloomClient:
    def __init__(self, client: Client, target: EngineTarget) -> None:
        self.client = client
        self.target = target

    def ui_link(self, workflow_id: str) -> str | None:
        return self.target.workflow_url(workflow_id)

    def _handle(self, name: str) -> WorkflowHandle:
        return self.client.get_workflow_handle(cluster_workflow_id(name))

    async def _update(self, name: str, update: str, arg: object, result_type: type) -> object:
        return await _execute_update(
            self._handle(name),
            update,
            arg,
            result_type,
            ClusterNotFound(f"cluster {name!r} not found"),
        )

    # -- clusters ------------------------------------------------------------------------

    def session(self) -> WorkerSession:
        return WorkerSession(self.client)

    async def launch(
        self,
        name: str,
        *,
        candidates: list[Candidate],
        ordered: bool = False,
        num_nodes: int,
        job: JobSpec,
        autostop: AutostopConfig | None = None,
    ) -> tuple[int, bool]:
        """Start the cluster workflow if needed, then submit the job: (job id, created)."""
        wid = cluster_workflow_id(name)
        existing = await self.try_describe(name)
        if existing is None or existing.status is ClusterStatus.TERMINATED:
            first = candidates[0]
            inp = ClusterInput(
                name=name,
                infra=first.infra,
                num_nodes=num_nodes,
                resources=first.resources,
                candidates=candidates,
                ordered=ordered,
                autostop=autostop or AutostopConfig(),
                user=user(),
            )
            nodes = f"{num_nodes} node{'s' if num_nodes > 1 else ''}"
            await self.client.start_workflow(
                CLUSTER_WORKFLOW,
                inp,
                id=wid,
                task_queue=TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=_search_attributes(
                    "cluster", name, ClusterStatus.INIT.value, first.infra
                ),
                memo={"num_nodes": num_nodes, "resources": first.resources},
                static_summary=f"cluster {name}: {nodes} on "
                + " or ".join(c.infra for c in candidates),
            )
            created = True
        else:
            created = False
            if existing.status is ClusterStatus.STOPPED:
                await self.start(name)
            if autostop is not None and autostop.idle_minutes is not None:
                await self.autostop(name, autostop.idle_minutes, autostop.down)
        result = await self._update(
            name, ClusterUpdate.SUBMIT_JOB, SubmitJobInput(spec=job), SubmitJobResult
        )
        assert isinstance(result, SubmitJobResult)
        return result.job_id, created

    async def exec(self, name: str, job: JobSpec) -> int:
        result = await self._update(
            name, ClusterUpdate.SUBMIT_JOB, SubmitJobInput(spec=job), SubmitJobResult
        )
        assert isinstance(result, SubmitJobResult)
        return result.job_id

    async def try_describe(self, name: str) -> ClusterDescription | None:
        try:
            return await self.describe(name)
        except ClusterNotFound:
            return None

    async def describe(self, name: str) -> ClusterDescription:
        try:
            return await self._handle(name).query(DESCRIBE_QUERY, result_type=ClusterDescription)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise ClusterNotFound(f"cluster {name!r} not found") from e
            raise

    async def list_clusters(self) -> list[ClusterSummary]:
        """Every live cluster, from one visibility query over search attributes."""
        out = []
        query = 'SkyloomKind="cluster" AND ExecutionStatus="Running"'
        async for ex in self.client.list_workflows(query):
            sa = ex.typed_search_attributes
            status = sa.get(search.SA_STATUS) or "INIT"
            if status == ClusterStatus.TERMINATED.value:
                continue
            memo = await ex.memo()
            out.append(
                ClusterSummary(
                    name=sa.get(search.SA_NAME) or ex.id.removeprefix("cluster-"),
                    status=status,
                    infra=sa.get(search.SA_INFRA) or "",
                    num_nodes=int(memo.get("num_nodes", 1)),
                    user=sa.get(search.SA_USER) or "",
                    launched_at=ex.start_time,
                    workflow_id=ex.id,
                )
            )
        return sorted(out, key=lambda c: c.name)

    async def cancel(self, name: str, job_ids: list[int], all_jobs: bool = False) -> list[int]:
        res = await self._update(
            name,
            ClusterUpdate.CANCEL_JOBS,
            CancelJobsInput(job_ids=job_ids, all=all_jobs),
            CancelJobsResult,
        )
        assert isinstance(res, CancelJobsResult)
        return res.cancelled

    async def stop(self, name: str) -> ClusterDescription:
        return await self._lifecycle(name, ClusterUpdate.STOP, StopInput())

    async def start(self, name: str) -> ClusterDescription:
        return await self._lifecycle(name, ClusterUpdate.START, StartInput())

    async def down(self, name: str, purge: bool = False) -> ClusterDescription:
        return await self._lifecycle(name, ClusterUpdate.DOWN, DownInput(purge=purge))

    async def autostop(self, name: str, idle_minutes: int | None, down: bool) -> ClusterDescription:
        return await self._lifecycle(
            name, ClusterUpdate.SET_AUTOSTOP, AutostopInput(idle_minutes=idle_minutes, down=down)
        )

    async def _lifecycle(self, name: str, update: str, arg: object) -> ClusterDescription:
        res = await self._update(name, update, arg, ClusterDescription)
        assert isinstance(res, ClusterDescription)
        return res

    async def wait_closed(self, name: str) -> None:
        await self._handle(name).result()

    # -- managed jobs --------------------------------------------------------------------

    async def _allocate_job_ids(self, count: int = 1) -> int:
        """The first of `count` new consecutive job ids."""
        handle = self.client.get_workflow_handle(JOB_IDS_WORKFLOW_ID)
        try:
            return int(await handle.execute_update(ALLOCATE_UPDATE, count, result_type=int))
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
        await self.client.start_workflow(
            JOB_IDS_WORKFLOW,
            1,
            id=JOB_IDS_WORKFLOW_ID,
            task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(search.SA_KIND, "job-ids")]
            ),
        )
        return int(await handle.execute_update(ALLOCATE_UPDATE, count, result_type=int))

    async def launch_managed(
        self, name: str, tasks: list[ManagedTask], recovery: RecoveryPolicy
    ) -> int:
        """Start `job-<id>`; returns the new job id."""
        (job_id,) = await self.launch_managed_many([(name, tasks, recovery)])
        return job_id

    async def launch_managed_many(
        self,
        jobs: list[tuple[str, list[ManagedTask], RecoveryPolicy]],
        concurrency: int = 32,
    ) -> list[int]:
        """Start many managed jobs: their ids in one call, their workflows in parallel."""
        first = await self._allocate_job_ids(len(jobs))
        gate = asyncio.Semaphore(concurrency)

        async def start(job_id: int, name: str, tasks: list[ManagedTask], rec: RecoveryPolicy):
            async with gate:
                await self._start_managed(job_id, name, tasks, rec)

        await asyncio.gather(*(start(first + i, *job) for i, job in enumerate(jobs)))
        return [first + i for i in range(len(jobs))]

    async def _start_managed(
        self, job_id: int, name: str, tasks: list[ManagedTask], recovery: RecoveryPolicy
    ) -> None:
        infra = tasks[0].candidates[0].infra if tasks and tasks[0].candidates else ""
        await self.client.start_workflow(
            MANAGED_JOB_WORKFLOW,
            ManagedJobInput(job_id=job_id, name=name, tasks=tasks, recovery=recovery, user=user()),
            id=managed_job_workflow_id(job_id),
            task_queue=TASK_QUEUE,
            search_attributes=_search_attributes(
                "job", name, ManagedJobStatus.PENDING.value, infra
            ),
            memo={"recovery_count": 0, "cluster": None, "infra": infra, "reason": None},
            static_summary=f"managed job {job_id} ({name}): {len(tasks)} task(s) on {infra}",
        )

    async def list_managed(self) -> list[dict]:
        """Every managed job, newest first, from one visibility query (state from search
        attributes and memo, which the workflow keeps current)."""
        out = []
        async for ex in self.client.list_workflows('SkyloomKind="job"'):
            sa = ex.typed_search_attributes
            memo = await ex.memo()
            out.append(
                {
                    "id": int(ex.id.removeprefix("job-")),
                    "name": sa.get(search.SA_NAME),
                    "status": sa.get(search.SA_STATUS) or ManagedJobStatus.PENDING.value,
                    "recovery_count": int(memo.get("recovery_count") or 0),
                    "cluster": memo.get("cluster"),
                    "infra": memo.get("infra") or sa.get(search.SA_INFRA),
                    "user": sa.get(search.SA_USER),
                    "submitted_at": ex.start_time.isoformat() if ex.start_time else None,
                    "ended_at": ex.close_time.isoformat() if ex.close_time else None,
                    "reason": memo.get("reason"),
                    "workflow_id": ex.id,
                }
            )
        return sorted(out, key=lambda j: -j["id"])

    async def count_managed_in_progress(self) -> dict[str, int]:
        """How many managed jobs are in each unfinished state (count queries, no listing:
        cheap with 10,000 jobs)."""
        states = [s for s in ManagedJobStatus if not s.terminal]
        counts = await asyncio.gather(
            *(
                self.client.count_workflows(
                    f'SkyloomKind="job" AND ExecutionStatus="Running" AND SkyloomStatus="{s.value}"'
                )
                for s in states
            )
        )
        return {s.value: c.count for s, c in zip(states, counts, strict=True) if c.count}

    async def describe_managed(self, job_id: int) -> ManagedJobView:
        try:
            handle = self.client.get_workflow_handle(managed_job_workflow_id(job_id))
            return await handle.query(DESCRIBE_QUERY, result_type=ManagedJobView)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise JobNotFound(f"managed job {job_id} not found") from e
            raise

    async def cancel_managed(self, job_id: int) -> bool:
        """Ask job `job_id` to cancel; False when it had already ended."""
        view = await self.describe_managed(job_id)
        if view.status.terminal:
            return False
        await self.client.get_workflow_handle(managed_job_workflow_id(job_id)).signal(CANCEL_SIGNAL)
        return True

    # -- services ------------------------------------------------------------------------

    async def serve_up(
        self, name: str, spec: ServiceSpec, tuning: dict[str, Any] | None = None
    ) -> str:
        """Start service `name` (its workflow id); Rejected when one of that name runs.
        `tuning` sets ServiceInput's cadences (report, drain, retry, continue-as-new)."""
        wid = service_workflow_id(name)
        infra = spec.task.candidates[0].infra
        try:
            await self.client.start_workflow(
                SERVICE_WORKFLOW,
                ServiceInput(name=name, spec=spec, user=user(), **(tuning or {})),
                id=wid,
                task_queue=TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=_search_attributes(
                    "service", name, ServiceStatus.REPLICA_INIT.value, infra
                ),
                memo={"endpoint": None, "version": 1},
                static_summary=f"service {name}: replicas on {infra}",
            )
        except RPCError as e:
            if e.status == RPCStatusCode.ALREADY_EXISTS:
                raise Rejected(
                    f"service {name!r} already exists; `skyloom serve update {name} ...` "
                    "changes it, `skyloom serve down` removes it"
                ) from e
            raise
        return wid

    def _service(self, name: str) -> WorkflowHandle:
        return self.client.get_workflow_handle(service_workflow_id(name))

    async def describe_service(self, name: str) -> ServiceView:
        try:
            view = await self._service(name).query(DESCRIBE_QUERY, result_type=ServiceView)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise ServiceNotFound(f"service {name!r} not found") from e
            raise
        if view.status is ServiceStatus.DOWN:
            # Its last run answers queries still; a service that is down is no more.
            raise ServiceNotFound(f"service {name!r} not found (it is down)")
        return view

    async def service_names(self) -> list[str]:
        """Every running service, from one visibility query."""
        names = []
        query = 'SkyloomKind="service" AND ExecutionStatus="Running"'
        async for ex in self.client.list_workflows(query):
            names.append(ex.typed_search_attributes.get(search.SA_NAME) or ex.id[8:])
        return sorted(names)

    async def list_services(self, names: list[str] | None = None) -> list[ServiceView]:
        """The named services (every running one when None), each asked for its state."""
        wanted = names if names else await self.service_names()
        views = await asyncio.gather(*(self.describe_service(n) for n in wanted))
        return list(views)

    async def _service_update(self, name: str, update: str, arg: object, result: type) -> object:
        return await _execute_update(
            self._service(name), update, arg, result, ServiceNotFound(f"service {name!r} not found")
        )

    async def update_service(self, name: str, spec: ServiceSpec, mode: str) -> int:
        res = await self._service_update(
            name,
            ServiceUpdate.UPDATE,
            UpdateServiceInput(spec=spec, mode=mode),
            UpdateServiceResult,
        )
        assert isinstance(res, UpdateServiceResult)
        return res.version

    async def down_service(self, name: str) -> ServiceView:
        """Take the service down: every replica released, its endpoint closed."""
        handle = self._service(name)
        try:
            desc = await handle.describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise ServiceNotFound(f"service {name!r} not found") from e
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise ServiceNotFound(f"service {name!r} not found (it is down)")
        res = await self._service_update(name, ServiceUpdate.DOWN, DownServiceInput(), ServiceView)
        assert isinstance(res, ServiceView)
        return res


async def _execute_update(
    handle: WorkflowHandle, update: str, arg: object, result_type: type, missing: LookupError
) -> object:
    """An update's result; Rejected with the workflow's reason when it refuses, `missing`
    when there is no such workflow."""
    try:
        return await handle.execute_update(update, arg, result_type=result_type)
    except WorkflowUpdateFailedError as e:
        raise Rejected(str(e.cause.message if hasattr(e.cause, "message") else e.cause)) from e
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise missing from e
        raise


def _search_attributes(kind: str, name: str, status: str, infra: str) -> TypedSearchAttributes:
    """What `status` and `jobs queue` list by: set at start, kept current by the workflow."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(search.SA_KIND, kind),
            SearchAttributePair(search.SA_NAME, name),
            SearchAttributePair(search.SA_STATUS, status),
            SearchAttributePair(search.SA_INFRA, infra),
            SearchAttributePair(search.SA_USER, user()),
        ]
    )
