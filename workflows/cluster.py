"""The cluster entity workflow (`cluster-<name>`): launch → jobs → stop/start → down.

It holds the cluster's whole state. Clients change it through updates (submit job,
cancel, stop, start, down, autostop) and read it through the `describe` query. It only
decides; every side effect is an activity. Deterministic code only.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from skyloom.activities.errors import application_error
    from skyloom.activities.models import (
        ClusterHandle,
        ClusterRef,
        KillInput,
        Phase,
        PhaseInput,
        PhaseResult,
        ProvisionInput,
        SyncInput,
    )
    from skyloom.workflows import calls, policies
    from skyloom.workflows.models import (
        CLUSTER_WORKFLOW,
        AutostopInput,
        CancelJobsInput,
        CancelJobsResult,
        ClusterDescription,
        ClusterInput,
        ClusterResult,
        ClusterState,
        ClusterStatus,
        DownInput,
        JobRecord,
        JobStatus,
        JobView,
        StartInput,
        StopInput,
        SubmitJobInput,
        SubmitJobResult,
    )
    from skyloom.workflows.search import SA_STATUS

_KEEP_FINISHED_JOBS = 500


def _reason(err: BaseException) -> str:
    return str(application_error(err) or err)


@workflow.defn(name=CLUSTER_WORKFLOW)
class ClusterWorkflow:
    @workflow.init
    def __init__(self, inp: ClusterInput) -> None:
        self.inp = inp
        self.state = inp.carried or ClusterState(autostop=inp.autostop)
        # Lifecycle changes (stop/start/down/autostop) are serialised; jobs start only
        # when no lifecycle change is under way.
        self.lifecycle = asyncio.Lock()
        self.job_task: asyncio.Task[None] | None = None
        self.running_job: JobRecord | None = None
        # Set when the running job must stop. Cancelling its task alone is not enough: an
        # activity that completes in the same activation as the cancel swallows it, and
        # the job would go on to its next step. Every step checks this flag first.
        self.stop_running = False
        # Bumped by every handler and job ending: the main loop re-evaluates on change.
        self.changes = 0

    # ---- main loop -------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ClusterInput) -> ClusterResult:
        try:
            if self.state.status is ClusterStatus.INIT:
                # Under the lifecycle lock: a `down` sent mid-launch waits for the nodes to
                # exist, then removes them, so none is created after its terminate.
                async with self.lifecycle:
                    await self._launch()
            seen = -1
            while self.state.status is not ClusterStatus.TERMINATED:
                if seen == self.changes:
                    await self._wait_for_change(seen)
                seen = self.changes
                if self.state.status is ClusterStatus.TERMINATED:
                    break
                if self._autostop_due() and not self.lifecycle.locked():
                    async with self.lifecycle:
                        if self.state.autostop.down:
                            try:
                                await self._down("autostop")
                            except ApplicationError as e:
                                # Stay UP and try again after another idle period.
                                self.state.reason = str(e)
                                self.state.last_active = workflow.now()
                        else:
                            await self._stop("autostop")
                    continue
                self._maybe_start_job()
                if self._should_continue_as_new():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(self._carry())
        except asyncio.CancelledError:
            # Cancelling the workflow means the cluster goes away: never leak its nodes.
            await self._terminate_nodes()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ClusterResult(name=inp.name, status=self.state.status, reason=self.state.reason)

    async def _wait_for_change(self, seen: int) -> None:
        deadline = policies.autostop_deadline(
            self.state.autostop, self.state.jobs, self.state.last_active
        )
        timeout = None
        if deadline is not None and self.state.status is ClusterStatus.UP:
            timeout = max(deadline - workflow.now(), timedelta(0))
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self.changes != seen or workflow.info().is_continue_as_new_suggested(),
                timeout=timeout,
            )

    def _autostop_due(self) -> bool:
        if self.state.status is not ClusterStatus.UP:
            return False
        deadline = policies.autostop_deadline(
            self.state.autostop, self.state.jobs, self.state.last_active
        )
        return deadline is not None and workflow.now() >= deadline

    def _should_continue_as_new(self) -> bool:
        return (
            workflow.info().is_continue_as_new_suggested()
            and self.job_task is None
            and not self.lifecycle.locked()
        )

    def _carry(self) -> ClusterInput:
        state = self.state.model_copy()
        state.jobs = policies.trim_history(state.jobs, _KEEP_FINISHED_JOBS)
        return self.inp.model_copy(update={"carried": state})

    def _changed(self) -> None:
        self.changes += 1

    def _set_status(self, status: ClusterStatus, reason: str | None = None) -> None:
        self.state.status = status
        self.state.reason = reason
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])
        self._changed()

    # ---- lifecycle -------------------------------------------------------------------

    def _ref(self) -> ClusterRef:
        return ClusterRef(
            cluster=self.inp.name,
            infra=self.inp.infra,
            handle=self.state.handle,
            owner=self._owner(),
        )

    def _owner(self) -> str:
        if not self.state.uid:
            self.state.uid = str(workflow.uuid4())
        return f"{self.inp.name}.{self.state.uid[:8]}"

    async def _launch(self) -> None:
        try:
            handle = await calls.PROVISION.run(
                "provision_nodes",
                ProvisionInput(
                    cluster=self.inp.name,
                    infra=self.inp.infra,
                    num_nodes=self.inp.num_nodes,
                    resources=self.inp.resources,
                    owner=self._owner(),
                ),
                result_type=ClusterHandle,
            )
        except ActivityError as e:
            reason = f"launch failed: {_reason(e)}"
            await self._terminate_nodes()
            self._fail_jobs(reason, (JobStatus.PENDING,))
            self._set_status(ClusterStatus.TERMINATED, reason)
            return
        self.state.handle = handle
        self.state.launched_at = self.state.last_active = workflow.now()
        workflow.upsert_memo({"num_nodes": self.inp.num_nodes, "resources": self.inp.resources})
        self._set_status(ClusterStatus.UP)

    async def _stop(self, why: str) -> None:
        await self._cancel_jobs_for(f"cluster stopped ({why})")
        await calls.QUICK.run(
            "stop_nodes",
            self._ref(),
        )
        self._set_status(ClusterStatus.STOPPED, f"stopped ({why})")

    async def _down(self, why: str, purge: bool = False) -> None:
        await self._cancel_jobs_for(f"cluster torn down ({why})")
        try:
            await self._terminate_nodes()
        except ActivityError as e:
            if not purge:
                raise ApplicationError(
                    f"could not release the nodes of {self.inp.name}: {_reason(e)}. "
                    "Retry when they are reachable, or `skyloom down --purge` to forget them.",
                    non_retryable=True,
                ) from e
            why += f"; purged, nodes may be left: {_reason(e)}"
        self._set_status(ClusterStatus.TERMINATED, f"down ({why})")

    async def _terminate_nodes(self) -> None:
        await calls.PROVISION.run(
            "terminate_nodes",
            self._ref(),
        )

    async def _cancel_jobs_for(self, reason: str) -> None:
        self._fail_jobs(reason, (JobStatus.PENDING,), status=JobStatus.CANCELLED)
        await self._cancel_running(reason)

    def _fail_jobs(
        self, reason: str, which: tuple[JobStatus, ...], status: JobStatus = JobStatus.FAILED
    ) -> None:
        for job in self.state.jobs:
            if job.status in which:
                job.status, job.reason, job.ended_at = status, reason, workflow.now()
        self._changed()

    async def _cancel_running(self, reason: str) -> None:
        task = self.job_task
        if task is None:
            return
        if self.running_job is not None:
            self.running_job.reason = reason
        self.stop_running = True
        task.cancel()
        await workflow.wait_condition(lambda: self.job_task is None)

    def _check_not_stopped(self) -> None:
        if self.stop_running:
            raise asyncio.CancelledError()

    # ---- jobs ------------------------------------------------------------------------

    def _maybe_start_job(self) -> None:
        if self.state.status is not ClusterStatus.UP or self.job_task or self.lifecycle.locked():
            return
        job = policies.next_job(self.state.jobs)
        if job is not None:
            job.status = JobStatus.SETTING_UP if job.spec.setup else JobStatus.RUNNING
            self.running_job = job
            self.stop_running = False
            self.job_task = asyncio.create_task(self._run_job(job))

    async def _run_job(self, job: JobRecord) -> None:
        assert self.state.handle is not None
        handle = self.state.handle
        job.started_at = workflow.now()
        self._changed()
        try:
            self._check_not_stopped()
            await calls.SYNC.run(
                "sync_files",
                SyncInput(
                    handle=handle,
                    job_id=job.id,
                    workdir=job.spec.workdir,
                    file_mounts=job.spec.file_mounts,
                ),
            )
            if job.spec.setup:
                job.status = JobStatus.SETTING_UP
                self._changed()
                result = await self._phase(job, handle, Phase.SETUP, job.spec.setup)
                status, code, rank = policies.phase_outcome(result.exit_codes, setup=True)
                if status is JobStatus.FAILED_SETUP:
                    self._finish(job, status, code, rank, f"setup failed on node {rank}")
                    return
            job.status = JobStatus.RUNNING
            self._changed()
            if job.spec.run:
                result = await self._phase(job, handle, Phase.RUN, job.spec.run)
                status, code, rank = policies.phase_outcome(result.exit_codes, setup=False)
                self._finish(
                    job, status, code, rank, None if rank is None else f"failed on node {rank}"
                )
            else:
                self._finish(job, JobStatus.SUCCEEDED, 0, None, None)
        except (asyncio.CancelledError, ActivityError) as e:
            # Cancelling the task surfaces as CancelledError, or as an ActivityError caused
            # by the activity's cancellation; either way the job was cancelled.
            cancelled = (
                self.stop_running
                or not isinstance(e, ActivityError)
                or isinstance(e.cause, CancelledError)
            )
            await calls.QUICK.run(
                "kill_job",
                KillInput(handle=handle, job_id=job.id),
            )
            if cancelled:
                self._finish(job, JobStatus.CANCELLED, None, None, job.reason or "cancelled")
            else:
                self._finish(job, JobStatus.FAILED, None, None, _reason(e))
        finally:
            self.job_task = self.running_job = None
            self._changed()

    async def _phase(
        self, job: JobRecord, handle: ClusterHandle, phase: Phase, command: str
    ) -> PhaseResult:
        inp = PhaseInput(
            handle=handle,
            job_id=job.id,
            phase=phase,
            command=command,
            envs=job.spec.envs,
            secrets=job.spec.secrets,
            num_nodes=job.spec.num_nodes,
            task_id=f"skyloom-{workflow.info().workflow_id}-{job.id}",
            num_gpus_per_node=job.spec.num_gpus_per_node,
            poll_seconds=self.inp.poll_seconds,
        )
        self._check_not_stopped()
        await calls.QUICK.run("start_phase", inp)
        self._check_not_stopped()
        return await calls.WATCH.run("watch_phase", inp, result_type=PhaseResult)

    def _finish(
        self,
        job: JobRecord,
        status: JobStatus,
        code: int | None,
        rank: int | None,
        reason: str | None,
    ) -> None:
        job.status, job.exit_code, job.failed_rank = status, code, rank
        job.reason = reason
        job.ended_at = self.state.last_active = workflow.now()

    # ---- updates ---------------------------------------------------------------------

    @workflow.update
    async def submit_job(self, inp: SubmitJobInput) -> SubmitJobResult:
        job = JobRecord(
            id=self.state.next_job_id,
            name=inp.spec.name,
            submitted_at=workflow.now(),
            num_nodes=inp.spec.num_nodes,
            has_setup=bool(inp.spec.setup),
            spec=inp.spec,
        )
        self.state.next_job_id += 1
        self.state.jobs.append(job)
        self._changed()
        return SubmitJobResult(job_id=job.id)

    @submit_job.validator
    def _validate_submit(self, inp: SubmitJobInput) -> None:
        if self.state.status in (ClusterStatus.TERMINATED, ClusterStatus.STOPPED):
            raise ValueError(f"cluster {self.inp.name} is {self.state.status.value}")
        if inp.spec.num_nodes > self.inp.num_nodes:
            raise ValueError(
                f"the job needs {inp.spec.num_nodes} nodes; cluster {self.inp.name} has "
                f"{self.inp.num_nodes}"
            )

    @workflow.update
    async def cancel_jobs(self, inp: CancelJobsInput) -> CancelJobsResult:
        wanted = {j.id for j in self.state.jobs} if inp.all else set(inp.job_ids)
        cancelled = []
        for job in self.state.jobs:
            if job.id not in wanted or job.status.terminal:
                continue
            cancelled.append(job.id)
            if job.status is JobStatus.PENDING:
                job.status, job.reason, job.ended_at = (
                    JobStatus.CANCELLED,
                    "cancelled",
                    workflow.now(),
                )
                self._changed()
        if self.running_job is not None and self.running_job.id in cancelled:
            await self._cancel_running("cancelled")
        return CancelJobsResult(cancelled=cancelled)

    @workflow.update
    async def stop(self, inp: StopInput) -> ClusterDescription:
        async with self.lifecycle:
            if self.state.status is ClusterStatus.UP:
                await self._stop("requested")
        return self.describe()

    @stop.validator
    def _validate_stop(self, inp: StopInput) -> None:
        if self.state.status in (ClusterStatus.INIT, ClusterStatus.TERMINATED):
            raise ValueError(f"cluster {self.inp.name} is {self.state.status.value}; cannot stop")

    @workflow.update
    async def start(self, inp: StartInput) -> ClusterDescription:
        async with self.lifecycle:
            if self.state.status is ClusterStatus.STOPPED:
                self.state.handle = await calls.PROVISION.run(
                    "start_nodes",
                    self._ref(),
                    result_type=ClusterHandle,
                )
                self.state.last_active = workflow.now()
                self._set_status(ClusterStatus.UP)
        return self.describe()

    @start.validator
    def _validate_start(self, inp: StartInput) -> None:
        if self.state.status is ClusterStatus.TERMINATED:
            raise ValueError(f"cluster {self.inp.name} is terminated")

    @workflow.update
    async def down(self, inp: DownInput) -> ClusterDescription:
        async with self.lifecycle:
            if self.state.status is not ClusterStatus.TERMINATED:
                await self._down("requested", purge=inp.purge)
        return self.describe()

    @workflow.update
    def set_autostop(self, inp: AutostopInput) -> ClusterDescription:
        off = inp.idle_minutes is None or inp.idle_minutes < 0
        self.state.autostop.idle_minutes = None if off else inp.idle_minutes
        self.state.autostop.down = inp.down
        # Like SkyPilot, setting autostop restarts the idle clock.
        self.state.last_active = workflow.now()
        self._changed()
        return self.describe()

    # ---- queries ---------------------------------------------------------------------

    @workflow.query
    def describe(self) -> ClusterDescription:
        return ClusterDescription(
            name=self.inp.name,
            status=self.state.status,
            infra=self.inp.infra,
            num_nodes=self.inp.num_nodes,
            resources=self.inp.resources,
            handle=self.state.handle,
            launched_at=self.state.launched_at,
            autostop=self.state.autostop,
            reason=self.state.reason,
            jobs=[JobView(**j.model_dump(exclude={"spec"})) for j in self.state.jobs],
        )
