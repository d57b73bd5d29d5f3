"""The typed programmatic client: what the CLI uses, and what other services can use.

Every call maps to one workflow start, update or query, or one visibility query; nothing
here decides anything about a cluster's lifecycle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from skyloom.activities.models import ClusterHandle
from skyloom.client.config import EngineTarget, user
from skyloom.spec.models import Task
from skyloom.workflows import search
from skyloom.workflows.models import (
    CANCEL_SIGNAL,
    CLUSTER_WORKFLOW,
    JOB_IDS_WORKFLOW,
    JOB_IDS_WORKFLOW_ID,
    MANAGED_JOB_WORKFLOW,
    TASK_QUEUE,
    AutostopConfig,
    AutostopInput,
    CancelJobsInput,
    CancelJobsResult,
    ClusterDescription,
    ClusterInput,
    ClusterStatus,
    DownInput,
    JobSpec,
    ManagedJobInput,
    ManagedJobStatus,
    ManagedJobView,
    ManagedTask,
    StartInput,
    StopInput,
    SubmitJobInput,
    SubmitJobResult,
    cluster_workflow_id,
    managed_job_workflow_id,
)
from skyloom.workflows.recovery import RecoveryPolicy
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode


class ClusterNotFound(LookupError):
    pass


class JobNotFound(LookupError):
    pass


class Rejected(ValueError):
    """The workflow refused the request (for example: exec on a stopped cluster)."""


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
        try:
            return await self._handle(name).execute_update(update, arg, result_type=result_type)
        except WorkflowUpdateFailedError as e:
            raise Rejected(str(e.cause.message if hasattr(e.cause, "message") else e.cause)) from e
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise ClusterNotFound(f"cluster {name!r} not found") from e
            raise

    # -- clusters ------------------------------------------------------------------------

    async def launch(
        self,
        name: str,
        *,
        infra: str,
        num_nodes: int,
        resources: dict,
        job: JobSpec,
        autostop: AutostopConfig | None = None,
        poll_seconds: float = 1.0,
    ) -> tuple[int, bool]:
        """Start the cluster workflow if needed, then submit the job: (job id, created)."""
        wid = cluster_workflow_id(name)
        existing = await self.try_describe(name)
        if existing is None or existing.status is ClusterStatus.TERMINATED:
            inp = ClusterInput(
                name=name,
                infra=infra,
                num_nodes=num_nodes,
                resources=resources,
                autostop=autostop or AutostopConfig(),
                user=user(),
                poll_seconds=poll_seconds,
            )
            await self.client.start_workflow(
                CLUSTER_WORKFLOW,
                inp,
                id=wid,
                task_queue=TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=_search_attributes(
                    "cluster", name, ClusterStatus.INIT.value, infra
                ),
                memo={"num_nodes": num_nodes, "resources": resources},
            )
            created = True
        else:
            created = False
            if existing.status is ClusterStatus.STOPPED:
                await self.start(name)
            if autostop is not None and autostop.idle_minutes is not None:
                await self.autostop(name, autostop.idle_minutes, autostop.down)
        result = await self._update(name, "submit_job", SubmitJobInput(spec=job), SubmitJobResult)
        assert isinstance(result, SubmitJobResult)
        return result.job_id, created

    async def exec(self, name: str, job: JobSpec) -> int:
        result = await self._update(name, "submit_job", SubmitJobInput(spec=job), SubmitJobResult)
        assert isinstance(result, SubmitJobResult)
        return result.job_id

    async def try_describe(self, name: str) -> ClusterDescription | None:
        try:
            return await self.describe(name)
        except ClusterNotFound:
            return None

    async def describe(self, name: str) -> ClusterDescription:
        try:
            return await self._handle(name).query("describe", result_type=ClusterDescription)
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
            name, "cancel_jobs", CancelJobsInput(job_ids=job_ids, all=all_jobs), CancelJobsResult
        )
        assert isinstance(res, CancelJobsResult)
        return res.cancelled

    async def stop(self, name: str) -> ClusterDescription:
        return await self._lifecycle(name, "stop", StopInput())

    async def start(self, name: str) -> ClusterDescription:
        return await self._lifecycle(name, "start", StartInput())

    async def down(self, name: str, purge: bool = False) -> ClusterDescription:
        return await self._lifecycle(name, "down", DownInput(purge=purge))

    async def autostop(self, name: str, idle_minutes: int | None, down: bool) -> ClusterDescription:
        return await self._lifecycle(
            name, "set_autostop", AutostopInput(idle_minutes=idle_minutes, down=down)
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
            return int(await handle.execute_update("allocate", count, result_type=int))
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
        return int(await handle.execute_update("allocate", count, result_type=int))

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
            return await handle.query("describe", result_type=ManagedJobView)
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


def node_handle(desc: ClusterDescription) -> ClusterHandle:
    if desc.handle is None:
        raise Rejected(f"cluster {desc.name} has no nodes yet ({desc.status.value})")
    return desc.handle
