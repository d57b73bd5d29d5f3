"""A managed job (`job-<id>`): launch a cluster for it, run it, recover it, clean up.

Its controller is this workflow, so it cannot die: a dead worker only pauses it. Each
attempt runs on a fresh cluster `job-<id>-<n>`, launched through the shared launch path
(placements tried in order, failover on capacity errors); the task id
(SKYPILOT_TASK_ID) stays the same across attempts so the job can resume from its
checkpoint.

Waiting is free: after starting a phase the workflow waits for the watcher to signal
that the phase ended or the nodes were preempted. It holds no activity and no timer
meanwhile, apart from a rare safety-net look of its own. A job that lives long (many
recoveries, months of waiting) continues as new while it waits, carrying its whole state
(`ManagedJobState`, bounded) and picking the running phase up where it was.

Cancel (the `cancel` signal, or cancelling the workflow) at any moment ends with the job
CANCELLED and every cluster it ever launched terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from skyloom.activities import models as m
    from skyloom.activities.errors import message_of
    from skyloom.activities.models import (
        ClusterHandle,
        ClusterRef,
        NodeState,
        Observation,
        ObserveInput,
        Phase,
        PhaseInput,
        Placement,
        SaveLogsInput,
        SyncInput,
    )
    from skyloom.workflows import calls
    from skyloom.workflows.launch import (
        Launcher,
        LaunchFailed,
        Pause,
        PhaseOutcome,
        PhaseWatch,
        Stopped,
    )
    from skyloom.workflows.models import (
        CANCEL_SIGNAL,
        DESCRIBE_QUERY,
        MANAGED_JOB_WORKFLOW,
        OBSERVE_SIGNAL,
        AttemptStage,
        CurrentAttempt,
        ManagedJobInput,
        ManagedJobState,
        ManagedJobStatus,
        ManagedJobView,
        ManagedTask,
    )
    from skyloom.workflows.models import MANAGED_JOB_ON_CLUSTER as JOB_ON_CLUSTER
    from skyloom.workflows.recovery import Action, Ending, decide, launch_order
    from skyloom.workflows.search import index, invalid_input

T = TypeVar("T")
Status = ManagedJobStatus
_MAX_EVENTS = 50
# A job's clusters are released at its end: tries, and the wait between them.
_FINAL_TERMINATE_TRIES = 3
_FINAL_TERMINATE_GAP = timedelta(minutes=1)


class _Cancelled(Exception):
    """Raised inside an attempt when the job is being cancelled."""


class _NoResource(Exception):
    pass


class _Precheck(Exception):
    pass


class _AttemptFailed(Exception):
    """An activity of the attempt failed for good (not the user's code, not preemption)."""


@workflow.defn(name=MANAGED_JOB_WORKFLOW)
class ManagedJobWorkflow:
    @workflow.init
    def __init__(self, inp: ManagedJobInput) -> None:
        self.inp = inp
        self.s = inp.carried or ManagedJobState(
            view=ManagedJobView(
                id=inp.job_id,
                name=inp.name,
                status=Status.PENDING,
                num_tasks=len(inp.tasks),
                num_nodes=max((t.spec.num_nodes for t in inp.tasks), default=1),
                submitted_at=workflow.now(),
            )
        )
        self.view = self.s.view
        self.phases = PhaseWatch(self.s.observed)

    # ---- signals and queries ----------------------------------------------------------

    @workflow.signal(name=OBSERVE_SIGNAL)
    def observe(self, observations: list[Observation]) -> None:
        # Only news about a cluster of ours that is still up is kept (a new watcher
        # retells every ending it finds; the carried state must stay small).
        live = self.s.live
        self.phases.observe(
            [
                o
                for o in observations
                if o.cluster in live and o.owner in (None, live[o.cluster].owner)
            ]
        )

    @workflow.signal(name=CANCEL_SIGNAL)
    def cancel(self) -> None:
        self.s.cancel_requested = True
        self._summary()

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> ManagedJobView:
        return self.view

    # ---- main -------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ManagedJobInput) -> ManagedJobView:
        problem = inp.problems(workflow.info().workflow_id)
        if inp.carried is not None and workflow.info().continued_run_id is None:
            # Only a run this job continued carries state: a client may not hand it nodes.
            problem = "carried: only a continued run carries state"
        if problem is not None:
            raise invalid_input(MANAGED_JOB_WORKFLOW, problem)
        if inp.carried is None:
            self.view.started_at = workflow.now()
        self._index()
        try:
            final, why = Status.SUCCEEDED, None
            for idx in range(self.view.task_index, len(inp.tasks)):
                if idx != self.view.task_index:
                    # The next task of a pipeline starts afresh.
                    self.view.task_index = idx
                    self.s.restarts, self.s.last_placement, self.s.move_on = 0, None, False
                final, why = await self._run_task(idx, inp.tasks[idx])
                if final is not Status.SUCCEEDED:
                    break
            await self._finish(final, why)
        except Pause:
            await workflow.wait_condition(workflow.all_handlers_finished)
            self.s.observed = self.phases.known()
            workflow.continue_as_new(inp.model_copy(update={"carried": self.s}))
        except asyncio.CancelledError:
            # Workflow cancellation: clean up all the same, then end cancelled.
            await self._finish(Status.CANCELLED, "cancelled")
            raise
        return self.view

    def _continue_suggested(self) -> bool:
        info = workflow.info()
        limit = self.inp.continue_after_events
        return info.is_continue_as_new_suggested() or (
            limit is not None and info.get_current_history_length() > limit
        )

    async def _finish(self, status: ManagedJobStatus, why: str | None) -> None:
        if status is Status.CANCELLED:
            self._set(Status.CANCELLING, why)
        # Every cluster it launched goes; one that cannot be released now (a host away)
        # is tried again a few times, then named in the reason rather than held forever.
        for attempt in range(_FINAL_TERMINATE_TRIES):
            for name in list(self.s.live):
                await self._terminate(name)
            if not self.s.live:
                break
            if attempt + 1 < _FINAL_TERMINATE_TRIES:
                await workflow.sleep(_FINAL_TERMINATE_GAP)
        if self.s.live:
            left = ", ".join(f"{n} on {r.infra}" for n, r in self.s.live.items())
            why = f"{why + '; ' if why else ''}could not release {left}: nodes may be left"
        self.s.current = None
        self.view.ended_at = workflow.now()
        self._set(status, why)

    # ---- one task, attempt after attempt ----------------------------------------------

    async def _run_task(self, idx: int, task: ManagedTask) -> tuple[ManagedJobStatus, str | None]:
        while True:
            if self.s.cancel_requested:
                return Status.CANCELLED, "cancelled"
            if self.s.current is None:
                recovering = self.s.last_placement is not None
                self._set(Status.RECOVERING if recovering else Status.STARTING)
            try:
                ending, codes = await self._attempt(task)
            except _Cancelled:
                return Status.CANCELLED, "cancelled"
            except _NoResource as e:
                return Status.FAILED_NO_RESOURCE, str(e)
            except _Precheck as e:
                return Status.FAILED_PRECHECKS, str(e)
            except _AttemptFailed as e:
                return Status.FAILED, str(e)
            d = decide(self.inp.recovery, ending, codes, self.s.restarts)
            if d.action is Action.FINISH:
                return Status(d.status or "FAILED"), d.why or None
            if d.action is Action.RESTART:
                self.s.restarts += 1
                self.view.restarts = self.s.restarts
            self.view.recovery_count += 1
            self.s.move_on = d.move_on
            self._event(f"recovering: {d.why}")

    async def _attempt(self, task: ManagedTask) -> tuple[Ending, list[int | None]]:
        """Launch a cluster (unless a continued run picks its attempt up), run setup and
        run on it, and tear it down: how it ended."""
        cur = self.s.current
        if cur is None:
            cur = await self._launch(task)
        pausing = False
        try:
            return await self._stages(cur, task)
        except Pause:
            pausing = True
            raise
        except ActivityError as e:
            # A node lost while we talked to it is a preemption if the provider says so.
            if await self._preempted(cur.handle):
                return Ending.PREEMPTED, []
            raise _AttemptFailed(message_of(e)) from e
        finally:
            if not pausing and not self.s.cancel_requested:
                await self._save_logs(cur.handle, f"{self.inp.job_id}/{self.s.attempts}")
                await self._terminate(cur.cluster)
                self.s.current = None

    async def _stages(
        self, cur: CurrentAttempt, task: ManagedTask
    ) -> tuple[Ending, list[int | None]]:
        """The attempt from its current stage on. A continued run starts the stage's phase
        again: starting is idempotent (the first claim on each node runs it), so a phase
        that is running or has ended is picked up, never run twice."""
        spec = task.spec
        if cur.stage is AttemptStage.SYNC:
            if spec.workdir or spec.file_mounts:
                await self._step(
                    calls.SYNC.run(
                        m.SYNC_FILES,
                        SyncInput(
                            handle=cur.handle,
                            job_id=JOB_ON_CLUSTER,
                            workdir=spec.workdir,
                            file_mounts=spec.file_mounts,
                        ),
                    )
                )
            cur.stage = AttemptStage.SETUP if spec.setup else AttemptStage.RUN
        if cur.stage is AttemptStage.SETUP:
            out = await self._phase(cur, task, Phase.SETUP, spec.setup or "true")
            if out.ending is not Ending.SUCCEEDED:
                ending = Ending.FAILED_SETUP if out.ending is Ending.FAILED else out.ending
                return ending, out.codes
            cur.stage = AttemptStage.RUN
        self._set(Status.RUNNING)
        out = await self._phase(cur, task, Phase.RUN, spec.run or "true")
        return out.ending, out.codes

    async def _launch(self, task: ManagedTask) -> CurrentAttempt:
        """Failover over the task's placements; while recovering, wait and try again until
        one has capacity (a first launch with no capacity anywhere fails)."""
        recovering = self.s.last_placement is not None
        wait = timedelta(seconds=self.inp.retry_launch_seconds)
        self.s.attempts += 1
        name = f"job-{self.inp.job_id}-{self.s.attempts}"
        owner = f"{name}.{workflow.info().run_id[:8]}"
        while True:
            launcher = Launcher(
                cluster=name,
                owner=owner,
                num_nodes=task.spec.num_nodes,
                candidates=task.candidates,
                ordered=task.ordered,
                on_try=self._on_try,
                step=self._step,
                stop=lambda: self.s.cancel_requested,
            )
            try:
                placements = await launcher.plan()
                order = launch_order(
                    [p.offer.where for p in placements], self._last_where(), self.s.move_on
                )
                handle, i = await launcher.provision(placements, order)
            except LaunchFailed as e:
                self.view.launch_attempts = e.attempts
                if e.invalid:
                    raise _Precheck(str(e)) from e
                if not recovering:
                    raise _NoResource(str(e)) from e
                self._event(f"no capacity ({len(e.attempts)} placement(s)); retrying in {wait}")
                self.s.live.pop(name, None)  # each failed placement was cleaned up
                if self._continue_suggested():
                    # Waiting for capacity may last long: continue as new between tries
                    # (nothing is running; the next run launches afresh).
                    raise Pause() from e
                await self._sleep(wait)
                self.s.move_on = False
                continue
            except ActivityError as e:
                raise _AttemptFailed(message_of(e)) from e
            except Stopped as e:
                raise _Cancelled() from e  # cancelled while its nodes were booting
            self.view.launch_attempts = launcher.attempts
            self.s.live[name] = ClusterRef(
                cluster=name, infra=handle.infra, owner=owner, handle=handle
            )
            self.view.cluster, self.view.infra, self.view.handle = name, handle.infra, handle
            self._event(f"launched {name} on {placements[i].offer.where}")
            self.s.current = CurrentAttempt(cluster=name, handle=handle, placement=i)
            self.s.last_placement, self.s.last_where = i, self._where(placements[i])
            self._index()
            return self.s.current

    def _on_try(self, ref: ClusterRef) -> None:
        # What to clean up if the job is cancelled while this placement is tried.
        self.s.live[ref.cluster] = ref
        self.view.cluster, self.view.infra = ref.cluster, ref.infra

    @staticmethod
    def _where(p: Placement) -> str:
        return f"{p.candidate}:{p.offer.where}"

    def _last_where(self) -> str | None:
        """Where the last attempt ran (`cloud/region/zone`; None: first launch)."""
        if self.s.last_placement is None or self.s.last_where is None:
            return None
        return self.s.last_where.split(":", 1)[-1]

    async def _phase(
        self, cur: CurrentAttempt, task: ManagedTask, phase: Phase, command: str
    ) -> PhaseOutcome:
        inp = PhaseInput(
            handle=cur.handle,
            job_id=JOB_ON_CLUSTER,
            phase=phase,
            command=command,
            envs={**task.spec.envs, "SKYPILOT_MANAGED_JOB_ID": str(self.inp.job_id)},
            secrets=task.spec.secrets,
            num_nodes=task.spec.num_nodes,
            task_id=f"skyloom-job-{self.inp.job_id}-{self.view.task_index}",
            num_gpus_per_node=task.spec.num_gpus_per_node,
            notify=workflow.info().workflow_id,
        )
        try:
            out = await self.phases.run(
                inp,
                self.s.live[cur.cluster],
                check_every=timedelta(seconds=self.inp.check_every_seconds),
                stop=lambda: self.s.cancel_requested,
                pause=self._continue_suggested,
                step=self._step,
            )
        except Stopped:
            raise _Cancelled() from None
        if out.ending is Ending.FAILED and None in out.codes and await self._preempted(cur.handle):
            return PhaseOutcome(Ending.PREEMPTED, out.codes, reason="preempted")
        return out

    async def _preempted(self, handle: ClusterHandle) -> bool:
        """Ask the provider (one look) whether the cluster's nodes were taken away."""
        try:
            seen = await calls.QUICK.run(
                m.OBSERVE_CLUSTER,
                ObserveInput(
                    ref=self.s.live[handle.cluster], job_id=JOB_ON_CLUSTER, phase=Phase.RUN
                ),
            )
        except ActivityError:
            return False
        self.observe(seen)
        return any(o.state == NodeState.PREEMPTED for o in seen)

    # ---- helpers ----------------------------------------------------------------------

    async def _step(self, call: Awaitable[T]) -> T:
        """Await an activity unless the job is cancelled meanwhile (by the signal, or the
        workflow itself being cancelled): then cancel it, wait until it has really stopped
        (a half-done launch must not outlive the cleanup that follows), and stop."""
        task = asyncio.ensure_future(call)
        try:
            await workflow.wait_condition(lambda: task.done() or self.s.cancel_requested)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _Cancelled()
        return task.result()

    async def _sleep(self, delay: timedelta) -> None:
        try:
            await workflow.wait_condition(lambda: self.s.cancel_requested, timeout=delay)
        except TimeoutError:
            return
        raise _Cancelled()

    async def _save_logs(self, handle: ClusterHandle, dest: str) -> None:
        with contextlib.suppress(ActivityError):
            await calls.QUICK.run(
                m.SAVE_LOGS, SaveLogsInput(handle=handle, job_id=JOB_ON_CLUSTER, dest=dest)
            )

    async def _terminate(self, name: str) -> bool:
        """Release a cluster of the job's; False (and it stays to be tried again) when
        its provider cannot now."""
        ref = self.s.live.get(name)
        if ref is None:
            return True
        try:
            await calls.PROVISION.run(m.TERMINATE_NODES, ref)
        except ActivityError as e:
            self._event(f"could not terminate {name} yet: {message_of(e)}")
            return False
        del self.s.live[name]
        self.phases.forget(name)
        if self.view.handle is not None and self.view.handle.cluster == name:
            self.view.handle = None  # its nodes are gone: nobody reads them any more
        self._event(f"terminated {name}")
        return True

    def _set(self, status: ManagedJobStatus, reason: str | None = None) -> None:
        changed = status is not self.view.status
        self.view.status = status
        if reason is not None:
            self.view.reason = reason
        if changed:
            self._event(status.value + (f": {reason.splitlines()[0]}" if reason else ""))
            self._index()

    def _index(self) -> None:
        """Search attributes and memo from the workflow's own state (see search.index)."""
        infra = self.view.infra or self.inp.tasks[0].candidates[0].infra
        index(
            kind="job",
            name=self.inp.name,
            status=self.view.status.value,
            infra=infra,
            user=self.inp.user,
            memo={
                "recovery_count": self.view.recovery_count,
                "cluster": self.view.cluster,
                "infra": self.view.infra or infra,
                "reason": self.view.reason,
            },
        )
        self._summary()

    def _summary(self) -> None:
        v = self.view
        parts = [v.status.value, v.infra or self.inp.tasks[0].candidates[0].infra]
        if v.num_tasks > 1:
            parts.append(f"task {v.task_index + 1}/{v.num_tasks}")
        if v.cluster:
            parts.append(v.cluster)
        if v.recovery_count:
            parts.append(f"{v.recovery_count} recover{'y' if v.recovery_count == 1 else 'ies'}")
        if self.s.cancel_requested and not v.status.terminal:
            parts.append("cancelling")
        workflow.set_current_details(" · ".join(parts))

    def _event(self, text: str) -> None:
        self.view.events.append(f"{workflow.now().isoformat(timespec='seconds')} {text}")
        del self.view.events[:-_MAX_EVENTS]
