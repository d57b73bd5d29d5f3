"""The cluster entity workflow (`cluster-<name>`): launch → jobs → stop/start → down.

It holds the cluster's whole state. Clients change it through updates (submit job,
cancel, stop, start, down, autostop) and read it through the `describe` query. It only
decides; every side effect is an activity. Its nodes come from the shared launch path
(workflows/launch.py: placements tried in order, failover on capacity errors) and its
jobs' phases are waited for through the watcher's signals, never by holding a thread.
Deterministic code only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from skyloom.activities import models as m
    from skyloom.activities.errors import application_error
    from skyloom.activities.models import (
        Capability,
        ClusterHandle,
        ClusterRef,
        KillInput,
        LaunchAttempt,
        Observation,
        Phase,
        PhaseInput,
        SyncInput,
    )
    from skyloom.workflows import calls, policies
    from skyloom.workflows.launch import Launcher, LaunchFailed, PhaseOutcome, PhaseWatch, Stopped
    from skyloom.workflows.models import (
        CLUSTER_WORKFLOW,
        DESCRIBE_QUERY,
        OBSERVE_SIGNAL,
        AutostopInput,
        CancelJobsInput,
        CancelJobsResult,
        ClusterDescription,
        ClusterInput,
        ClusterResult,
        ClusterState,
        ClusterStatus,
        ClusterUpdate,
        DownInput,
        JobRecord,
        JobSpec,
        JobStatus,
        JobView,
        StartInput,
        StopInput,
        SubmitJobInput,
        SubmitJobResult,
    )
    from skyloom.workflows.recovery import Ending
    from skyloom.workflows.search import index, invalid_input

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
        self.phases = PhaseWatch()
        # Lifecycle handlers waiting for the lock: no job starts meanwhile (a lock just
        # released to a waiter does not look locked for a moment).
        self.lifecycle_waiting = 0
        self.downs_waiting = 0
        # Bumped by every handler and job ending: the main loop re-evaluates on change.
        self.changes = 0

    # ---- main loop -------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ClusterInput) -> ClusterResult:
        problem = inp.problems(workflow.info().workflow_id)
        if inp.carried is not None and workflow.info().continued_run_id is None:
            # Only a run this workflow continued carries state: a client may not hand a
            # fresh cluster nodes (hosts, users, keys) of its own making.
            problem = "carried: only a continued run carries state"
        if problem is not None:
            # Any client may start this workflow: a bad input ends it here, having
            # created nothing and joined nothing into a path or a command.
            raise invalid_input(CLUSTER_WORKFLOW, problem)
        self._index()
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
                        await self._autostop()
                    continue
                self._maybe_start_job()
                if self._should_continue_as_new():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(self._carry())
        except (asyncio.CancelledError, ActivityError) as e:
            if isinstance(e, ActivityError) and not isinstance(e.cause, CancelledError):
                raise
            # Cancelling the workflow (which may surface through an activity it was
            # awaiting) means the cluster goes away: never leak its nodes.
            await self._terminate_nodes()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ClusterResult(name=inp.name, status=self.state.status, reason=self.state.reason)

    async def _wait_for_change(self, seen: int) -> None:
        if self.lifecycle.locked() or self.lifecycle_waiting:
            # A stop/start/down is under way: nothing is due before it ends (an autostop
            # deadline that passed meanwhile is looked at again then, never spun on).
            await workflow.wait_condition(
                lambda: (
                    self.changes != seen or not (self.lifecycle.locked() or self.lifecycle_waiting)
                )
            )
            return
        deadline = policies.autostop_deadline(
            self.state.autostop, self.state.jobs, self.state.last_active
        )
        timeout = None
        if deadline is not None and self.state.status is ClusterStatus.UP:
            timeout = max(deadline - workflow.now(), timedelta(seconds=1))
        with contextlib.suppress(TimeoutError):
            # Only a continue-as-new that can happen now wakes the loop (one suggested while
            # a job runs waits for the job's end, which is a change anyway).
            await workflow.wait_condition(
                lambda: self.changes != seen or self._should_continue_as_new(), timeout=timeout
            )

    def _autostop_due(self) -> bool:
        if self.state.status is not ClusterStatus.UP:
            return False
        deadline = policies.autostop_deadline(
            self.state.autostop, self.state.jobs, self.state.last_active
        )
        return deadline is not None and workflow.now() >= deadline

    async def _autostop(self) -> None:
        if self.state.autostop.down:
            try:
                await self._down("autostop")
            except ApplicationError as e:
                # Stay UP and try again after another idle period.
                self.state.reason = str(e)
                self.state.last_active = workflow.now()
            return
        if not self._can(Capability.STOP):
            # Set at launch before the placement was known: this infra cannot stop.
            self.state.autostop.idle_minutes = None
            self.state.reason = f"autostop off: the {self._infra()} infra cannot stop nodes"
            self._changed()
            return
        try:
            await self._stop("autostop")
        except ActivityError as e:
            # Nodes that cannot be stopped now (a host away): stay UP, try again later.
            self.state.reason = f"autostop could not stop the nodes: {_reason(e)}"
            self.state.last_active = workflow.now()
            self._changed()

    def _continue_suggested(self) -> bool:
        info = workflow.info()
        limit = self.inp.continue_after_events
        return info.is_continue_as_new_suggested() or (
            limit is not None and info.get_current_history_length() > limit
        )

    def _should_continue_as_new(self) -> bool:
        return (
            self._continue_suggested()
            and self.job_task is None
            and not (self.lifecycle.locked() or self.lifecycle_waiting)
        )

    def _carry(self) -> ClusterInput:
        state = self.state.model_copy()
        # Finished jobs keep what queries show; their scripts and envs are not carried
        # (hundreds of them would outgrow a payload).
        state.jobs = [
            j.model_copy(update={"spec": JobSpec(name=j.spec.name, num_nodes=j.num_nodes)})
            if j.status.terminal
            else j
            for j in policies.trim_history(state.jobs, _KEEP_FINISHED_JOBS)
        ]
        return self.inp.model_copy(update={"carried": state})

    def _changed(self) -> None:
        self.changes += 1
        workflow.set_current_details(self._summary())

    def _set_status(self, status: ClusterStatus, reason: str | None = None) -> None:
        self.state.status = status
        self.state.reason = reason
        self._index()
        self._changed()

    def _index(self) -> None:
        """Search attributes and memo from the workflow's own state, so a cluster started
        by any Temporal client is listed like the rest (written only when they change)."""
        index(
            kind="cluster",
            name=self.inp.name,
            status=self.state.status.value,
            infra=self._infra(),
            user=self.inp.user,
            memo={"num_nodes": self.inp.num_nodes, "resources": self.inp.resources},
        )
        workflow.set_current_details(self._summary())

    def _summary(self) -> str:
        """One line for people scanning the web UI."""
        s = self.state
        nodes = f"{self.inp.num_nodes} node{'s' if self.inp.num_nodes > 1 else ''}"
        parts = [s.status.value, self._infra(), nodes]
        job = self.running_job or next((j for j in reversed(s.jobs)), None)
        if job is not None:
            parts.append(f"job {job.id} {job.status.value}")
        if s.reason and s.status is not ClusterStatus.UP:
            parts.append(s.reason.splitlines()[0][:120])
        return " · ".join(parts)

    def _infra(self) -> str:
        return self.state.infra or self.inp.all_candidates()[0].infra

    def _can(self, capability: Capability) -> bool:
        # A handle recorded before capabilities existed says nothing: allow.
        h = self.state.handle
        return h is None or not h.capabilities or h.can(capability)

    # ---- lifecycle -------------------------------------------------------------------

    def _ref(self) -> ClusterRef:
        return ClusterRef(
            cluster=self.inp.name,
            infra=self._infra(),
            handle=self.state.handle,
            owner=self._owner(),
        )

    def _owner(self) -> str:
        if not self.state.uid:
            self.state.uid = str(workflow.uuid4())
        return f"{self.inp.name}.{self.state.uid[:8]}"

    def _on_try(self, ref: ClusterRef) -> None:
        # Where cleanup must look if the workflow is cancelled during this placement.
        self.state.infra = ref.infra

    def _on_attempt(self, attempt: LaunchAttempt) -> None:
        self.state.launch_attempts.append(attempt)
        self._changed()

    async def _launch(self) -> None:
        launcher = Launcher(
            cluster=self.inp.name,
            owner=self._owner(),
            num_nodes=self.inp.num_nodes,
            candidates=self.inp.all_candidates(),
            ordered=self.inp.ordered,
            on_try=self._on_try,
            on_attempt=self._on_attempt,
            stop=lambda: self.downs_waiting > 0,
        )
        try:
            handle, _ = await launcher.provision(await launcher.plan())
        except Stopped:
            return  # a down is waiting: it removes what this launch made (by owner)
        except (LaunchFailed, ActivityError) as e:
            reason = f"launch failed: {e if isinstance(e, LaunchFailed) else _reason(e)}"
            if isinstance(e, ActivityError):
                try:
                    await self._terminate_nodes()
                except ActivityError as cleanup:
                    reason += f"; cleanup failed, nodes may be left: {_reason(cleanup)}"
            self._fail_jobs(reason, (JobStatus.PENDING,))
            self._set_status(ClusterStatus.TERMINATED, reason)
            return
        self.state.handle = handle
        self.state.infra = handle.infra
        self.state.launched_at = self.state.last_active = workflow.now()
        self._set_status(ClusterStatus.UP)

    async def _stop(self, why: str) -> None:
        await self._cancel_jobs_for(f"cluster stopped ({why})")
        # A bounded number of tries: a stop that cannot reach a node must end (and say
        # so), not hold the lifecycle lock forever.
        await calls.PROVISION.run(m.STOP_NODES, self._ref())
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
        await calls.PROVISION.run(m.TERMINATE_NODES, self._ref())

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
        job = self.running_job
        if job is not None:
            job.reason = reason
        self.stop_running = True
        task.cancel()
        await workflow.wait_condition(lambda: self.job_task is None or task.done())
        if self.job_task is task:
            # Cancelled before it ever ran: its own cleanup never ran either.
            if job is not None and not job.status.terminal:
                self._finish(job, JobStatus.CANCELLED, None, None, reason)
            self.job_task = self.running_job = None
            self._changed()

    def _check_not_stopped(self) -> None:
        if self.stop_running:
            raise Stopped()

    # ---- jobs ------------------------------------------------------------------------

    def _maybe_start_job(self) -> None:
        busy = self.lifecycle.locked() or self.lifecycle_waiting
        if self.state.status is not ClusterStatus.UP or self.job_task or busy:
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
            if job.spec.workdir or job.spec.file_mounts:
                await calls.SYNC.run(
                    m.SYNC_FILES,
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
                out = await self._phase(job, handle, Phase.SETUP, job.spec.setup)
                if out.ending is not Ending.SUCCEEDED:
                    await self._end_failed(job, handle, out, JobStatus.FAILED_SETUP, "setup")
                    return
            job.status = JobStatus.RUNNING
            self._changed()
            if job.spec.run:
                out = await self._phase(job, handle, Phase.RUN, job.spec.run)
                if out.ending is not Ending.SUCCEEDED:
                    await self._end_failed(job, handle, out, JobStatus.FAILED, "run")
                    return
            self._finish(job, JobStatus.SUCCEEDED, 0, None, None)
        except (asyncio.CancelledError, ActivityError, Stopped) as e:
            # Cancelling the task surfaces as CancelledError, or as an ActivityError caused
            # by the activity's cancellation; either way the job was cancelled.
            cancelled = (
                self.stop_running
                or not isinstance(e, ActivityError)
                or isinstance(e.cause, CancelledError)
            )
            await calls.QUICK.run(m.KILL_JOB, KillInput(handle=handle, job_id=job.id))
            if cancelled:
                self._finish(job, JobStatus.CANCELLED, None, None, job.reason or "cancelled")
            else:
                self._finish(job, JobStatus.FAILED, None, None, _reason(e))
        finally:
            self.phases.forget(handle.cluster)
            self.job_task = self.running_job = None
            self._changed()

    async def _end_failed(
        self,
        job: JobRecord,
        handle: ClusterHandle,
        out: PhaseOutcome,
        status: JobStatus,
        phase: str,
    ) -> None:
        if len(out.codes) < job.spec.num_nodes:
            # A rank failed while others still run: a distributed job cannot go on.
            await calls.QUICK.run(m.KILL_JOB, KillInput(handle=handle, job_id=job.id))
        reason: str | None
        if out.ending is Ending.PREEMPTED:
            reason = f"{phase} stopped: the nodes were preempted"
        elif phase == "setup" and out.exit_code is not None:
            reason = f"setup failed on node {out.failed_rank}"
        else:
            reason = out.reason
        self._finish(job, status, out.exit_code, out.failed_rank, reason)

    async def _phase(
        self, job: JobRecord, handle: ClusterHandle, phase: Phase, command: str
    ) -> PhaseOutcome:
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
            notify=workflow.info().workflow_id,
        )
        self._check_not_stopped()
        return await self.phases.run(
            inp,
            self._ref(),
            check_every=timedelta(seconds=self.inp.check_every_seconds),
            stop=lambda: self.stop_running,
        )

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

    # ---- signals ---------------------------------------------------------------------

    @workflow.signal(name=OBSERVE_SIGNAL)
    def observe(self, observations: list[Observation]) -> None:
        """From the watcher: phases that ended on this cluster's nodes. Only news about
        the running job (or the nodes) of this cluster (not an older namesake's) is kept;
        a new watcher retells old endings."""
        job = self.running_job
        if job is None:
            return
        owner = self._owner()
        self.phases.observe(
            [o for o in observations if o.job_id in (None, job.id) and o.owner in (None, owner)]
        )

    # ---- updates ---------------------------------------------------------------------

    @workflow.update(name=ClusterUpdate.SUBMIT_JOB)
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
        problem = inp.spec.problems()
        if problem is not None:
            raise ValueError(problem)
        if inp.spec.num_nodes > self.inp.num_nodes:
            raise ValueError(
                f"the job needs {inp.spec.num_nodes} nodes; cluster {self.inp.name} has "
                f"{self.inp.num_nodes}"
            )

    @workflow.update(name=ClusterUpdate.CANCEL_JOBS)
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

    @contextlib.asynccontextmanager
    async def _lifecycle_change(self) -> AsyncIterator[None]:
        """The lifecycle lock, counted while waited for (no job starts meanwhile)."""
        self.lifecycle_waiting += 1
        acquired = False
        try:
            async with self.lifecycle:
                self.lifecycle_waiting -= 1
                acquired = True
                yield
        finally:
            if not acquired:
                self.lifecycle_waiting -= 1
            self._changed()

    @workflow.update(name=ClusterUpdate.STOP)
    async def stop(self, inp: StopInput) -> ClusterDescription:
        async with self._lifecycle_change():
            if self.state.status is ClusterStatus.UP:
                await self._stop("requested")
        return self.describe()

    @stop.validator
    def _validate_stop(self, inp: StopInput) -> None:
        if self.state.status in (ClusterStatus.INIT, ClusterStatus.TERMINATED):
            raise ValueError(f"cluster {self.inp.name} is {self.state.status.value}; cannot stop")
        if not self._can(Capability.STOP):
            raise ValueError(
                f"cluster {self.inp.name} cannot be stopped: the {self._infra()} infra has no "
                "stop (its nodes cannot keep their disks); use `skyloom down`"
            )

    @workflow.update(name=ClusterUpdate.START)
    async def start(self, inp: StartInput) -> ClusterDescription:
        async with self._lifecycle_change():
            if self.state.status is ClusterStatus.STOPPED:
                self.state.handle = await calls.PROVISION.run(m.START_NODES, self._ref())
                self.state.last_active = workflow.now()
                self._set_status(ClusterStatus.UP)
        return self.describe()

    @start.validator
    def _validate_start(self, inp: StartInput) -> None:
        if self.state.status is ClusterStatus.TERMINATED:
            raise ValueError(f"cluster {self.inp.name} is terminated")

    @workflow.update(name=ClusterUpdate.DOWN)
    async def down(self, inp: DownInput) -> ClusterDescription:
        # Said before waiting for the lock: a launch waiting for nodes to boot gives up.
        self.downs_waiting += 1
        try:
            async with self._lifecycle_change():
                if self.state.status is not ClusterStatus.TERMINATED:
                    await self._down("requested", purge=inp.purge)
        finally:
            self.downs_waiting -= 1
        return self.describe()

    @workflow.update(name=ClusterUpdate.SET_AUTOSTOP)
    def set_autostop(self, inp: AutostopInput) -> ClusterDescription:
        off = inp.idle_minutes is None or inp.idle_minutes < 0
        self.state.autostop.idle_minutes = None if off else inp.idle_minutes
        self.state.autostop.down = inp.down
        # Like SkyPilot, setting autostop restarts the idle clock.
        self.state.last_active = workflow.now()
        self._changed()
        return self.describe()

    @set_autostop.validator
    def _validate_autostop(self, inp: AutostopInput) -> None:
        on = inp.idle_minutes is not None and inp.idle_minutes >= 0
        if on and not inp.down and not self._can(Capability.STOP):
            raise ValueError(
                f"cluster {self.inp.name} cannot autostop: the {self._infra()} infra has no "
                "stop; use autostop with --down"
            )

    # ---- queries ---------------------------------------------------------------------

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> ClusterDescription:
        handle = self.state.handle
        return ClusterDescription(
            name=self.inp.name,
            status=self.state.status,
            infra=self._infra(),
            num_nodes=self.inp.num_nodes,
            resources=self.inp.resources,
            handle=handle,
            launched_at=self.state.launched_at,
            autostop=self.state.autostop,
            reason=self.state.reason,
            jobs=[JobView(**j.model_dump(exclude={"spec"})) for j in self.state.jobs],
            launch_attempts=self.state.launch_attempts,
            capabilities=handle.capabilities if handle else [],
        )
