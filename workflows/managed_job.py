"""A managed job (`job-<id>`): launch a cluster for it, run it, recover it, clean up.

Its controller is this workflow, so it cannot die: a dead worker only pauses it. Each
attempt runs on a fresh cluster `job-<id>-<n>`; the task id (SKYPILOT_TASK_ID) stays the
same across attempts so the job can resume from its checkpoint.

Waiting is free: after starting a phase the workflow waits for the shared watcher
(worker/watcher.py) to signal that the phase ended or the nodes were preempted. It holds
no activity and no timer meanwhile, apart from a rare safety-net look of its own.

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
    from skyloom.activities.errors import ErrorKind, application_error, kind_of
    from skyloom.activities.models import (
        ClusterHandle,
        ClusterRef,
        Observation,
        ObserveInput,
        Phase,
        PhaseInput,
        ProvisionInput,
        SaveLogsInput,
        SyncInput,
    )
    from skyloom.workflows import calls
    from skyloom.workflows.models import (
        CANCEL_SIGNAL,
        MANAGED_JOB_WORKFLOW,
        OBSERVE_SIGNAL,
        ManagedJobInput,
        ManagedJobStatus,
        ManagedJobView,
        ManagedTask,
    )
    from skyloom.workflows.models import MANAGED_JOB_ON_CLUSTER as JOB_ON_CLUSTER
    from skyloom.workflows.recovery import Action, Ending, decide, launch_order
    from skyloom.workflows.search import SA_STATUS

T = TypeVar("T")
Status = ManagedJobStatus
_MAX_EVENTS = 50


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
        self.view = ManagedJobView(
            id=inp.job_id,
            name=inp.name,
            status=Status.PENDING,
            num_tasks=len(inp.tasks),
            submitted_at=workflow.now(),
        )
        self.observed: dict[tuple, Observation] = {}
        self.cancel_requested = False
        # Clusters launched (or being launched) and not yet terminated.
        self.live: dict[str, ClusterRef] = {}
        self.attempts = 0

    # ---- signals and queries ----------------------------------------------------------

    @workflow.signal(name=OBSERVE_SIGNAL)
    def observe(self, observations: list[Observation]) -> None:
        for o in observations:
            self.observed[o.key] = o

    @workflow.signal(name=CANCEL_SIGNAL)
    def cancel(self) -> None:
        self.cancel_requested = True

    @workflow.query
    def describe(self) -> ManagedJobView:
        return self.view

    # ---- main -------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ManagedJobInput) -> ManagedJobView:
        self.view.started_at = workflow.now()
        try:
            final, why = Status.SUCCEEDED, None
            for idx, task in enumerate(inp.tasks):
                self.view.task_index = idx
                final, why = await self._run_task(idx, task)
                if final is not Status.SUCCEEDED:
                    break
            await self._finish(final, why)
        except asyncio.CancelledError:
            # Workflow cancellation: clean up all the same, then end cancelled.
            await self._finish(Status.CANCELLED, "cancelled")
            raise
        return self.view

    async def _finish(self, status: ManagedJobStatus, why: str | None) -> None:
        if status is Status.CANCELLED:
            self._set(Status.CANCELLING, why)
        for name in list(self.live):
            await self._terminate(name)
        self.view.ended_at = workflow.now()
        self._set(status, why)

    # ---- one task, attempt after attempt ----------------------------------------------

    async def _run_task(self, idx: int, task: ManagedTask) -> tuple[ManagedJobStatus, str | None]:
        restarts = 0
        last: int | None = None
        move_on = False
        while True:
            if self.cancel_requested:
                return Status.CANCELLED, "cancelled"
            recovering = last is not None
            self._set(Status.RECOVERING if recovering else Status.STARTING)
            try:
                ending, codes, last = await self._attempt(idx, task, last, move_on, recovering)
            except _Cancelled:
                return Status.CANCELLED, "cancelled"
            except _NoResource as e:
                return Status.FAILED_NO_RESOURCE, str(e)
            except _Precheck as e:
                return Status.FAILED_PRECHECKS, str(e)
            except _AttemptFailed as e:
                return Status.FAILED, str(e)
            d = decide(self.inp.recovery, ending, codes, restarts)
            if d.action is Action.FINISH:
                return Status(d.status or "FAILED"), d.why or None
            if d.action is Action.RESTART:
                restarts += 1
                self.view.restarts = restarts
            self.view.recovery_count += 1
            move_on = d.move_on
            self._event(f"recovering: {d.why}")

    async def _attempt(
        self, idx: int, task: ManagedTask, last: int | None, move_on: bool, recovering: bool
    ) -> tuple[Ending, list[int | None], int]:
        """Launch a cluster, run setup and run on it, and tear it down: how it ended."""
        self.attempts += 1
        name = f"job-{self.inp.job_id}-{self.attempts}"
        handle, where = await self._launch(name, task, last, move_on, recovering)
        try:
            spec = task.spec
            if spec.workdir or spec.file_mounts:
                await self._step(
                    calls.SYNC.run(
                        "sync_files",
                        SyncInput(
                            handle=handle,
                            job_id=JOB_ON_CLUSTER,
                            workdir=spec.workdir,
                            file_mounts=spec.file_mounts,
                        ),
                    )
                )
            if spec.setup:
                ending, codes = await self._phase(handle, task, Phase.SETUP, spec.setup)
                if ending is Ending.FAILED:
                    ending = Ending.FAILED_SETUP
                if ending is not Ending.SUCCEEDED:
                    return ending, codes, where
            self._set(Status.RUNNING)
            ending, codes = await self._phase(handle, task, Phase.RUN, spec.run or "true")
            return ending, codes, where
        except ActivityError as e:
            # A node lost while we talked to it is a preemption if the provider says so.
            if await self._preempted(handle):
                return Ending.PREEMPTED, [], where
            raise _AttemptFailed(_message(e)) from e
        finally:
            if not self.cancel_requested:
                await self._save_logs(handle, f"{self.inp.job_id}/{self.attempts}")
                await self._terminate(name)

    async def _launch(
        self, name: str, task: ManagedTask, last: int | None, move_on: bool, recovering: bool
    ) -> tuple[ClusterHandle, int]:
        """Failover over the task's candidates; while recovering, wait and try again until
        one has capacity (a first launch with no capacity anywhere fails)."""
        wait = timedelta(seconds=self.inp.retry_launch_seconds)
        while True:
            reasons = []
            for i in launch_order(task.candidates, last, move_on):
                cand = task.candidates[i]
                owner = f"{name}.{workflow.info().run_id[:8]}"
                self.live[name] = ClusterRef(cluster=name, infra=cand.infra, owner=owner)
                self.view.cluster, self.view.infra = name, cand.infra
                try:
                    handle = await self._step(
                        calls.PROVISION.run(
                            "provision_nodes",
                            ProvisionInput(
                                cluster=name,
                                infra=cand.infra,
                                num_nodes=task.spec.num_nodes,
                                resources=cand.resources,
                                owner=owner,
                            ),
                            result_type=ClusterHandle,
                        )
                    )
                except ActivityError as e:
                    kind = kind_of(e)
                    await self._terminate(name)
                    if kind is ErrorKind.INVALID_SPEC:
                        raise _Precheck(_message(e)) from e
                    reasons.append(f"{cand.infra}: {_message(e)}")
                    continue
                self.live[name] = ClusterRef(
                    cluster=name, infra=cand.infra, owner=owner, handle=handle
                )
                self.view.handle = handle
                self._event(f"launched {name} on {cand.infra}")
                self._memo()
                return handle, i
            if not recovering:
                raise _NoResource("; ".join(reasons))
            self._event(f"no capacity ({'; '.join(reasons)}); retrying in {wait}")
            await self._sleep(wait)
            move_on = False

    async def _phase(
        self, handle: ClusterHandle, task: ManagedTask, phase: Phase, command: str
    ) -> tuple[Ending, list[int | None]]:
        inp = PhaseInput(
            handle=handle,
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
        await self._step(calls.QUICK.run("start_phase", inp))
        ref = self.live[handle.cluster]
        check = timedelta(seconds=self.inp.check_every_seconds)
        while True:
            result = self._phase_result(handle, phase, task.spec.num_nodes)
            if result is not None:
                ending, codes = result
                if ending is Ending.FAILED and None in codes and await self._preempted(handle):
                    return Ending.PREEMPTED, codes
                return ending, codes
            try:
                await workflow.wait_condition(
                    lambda: (
                        self.cancel_requested
                        or self._phase_result(handle, phase, task.spec.num_nodes) is not None
                    ),
                    timeout=check,
                )
            except TimeoutError:
                # No news for a long time: look ourselves (a worker may run no watcher).
                seen = await calls.QUICK.run(
                    "observe_cluster",
                    ObserveInput(ref=ref, job_id=JOB_ON_CLUSTER, phase=phase),
                    result_type=list[Observation],
                )
                self.observe(seen)
            if self.cancel_requested:
                raise _Cancelled()

    def _phase_result(
        self, handle: ClusterHandle, phase: Phase, num_nodes: int
    ) -> tuple[Ending, list[int | None]] | None:
        name = handle.cluster
        if any((name, n.rank, None, None) in self.observed for n in handle.nodes):
            return Ending.PREEMPTED, []
        codes: list[int | None] = []
        for rank in range(num_nodes):
            o = self.observed.get((name, rank, JOB_ON_CLUSTER, phase.value))
            if o is None:
                codes.append(-1)
                continue
            codes.append(o.exit_code if o.state == "exited" else None)
        ended = [c for c in codes if c != -1]
        if any(c != 0 for c in ended):
            # One failed (or killed) rank ends the phase: the cluster is torn down anyway.
            return Ending.FAILED, [c for c in codes if c != -1]
        if len(ended) == num_nodes:
            return Ending.SUCCEEDED, codes
        return None

    async def _preempted(self, handle: ClusterHandle) -> bool:
        """Ask the provider (one look) whether the cluster's nodes were taken away."""
        try:
            seen = await calls.QUICK.run(
                "observe_cluster",
                ObserveInput(ref=self.live[handle.cluster], job_id=JOB_ON_CLUSTER, phase=Phase.RUN),
                result_type=list[Observation],
            )
        except ActivityError:
            return False
        self.observe(seen)
        return any(o.state == "preempted" for o in seen)

    # ---- helpers ----------------------------------------------------------------------

    async def _step(self, call: Awaitable[T]) -> T:
        """Await an activity unless the job is cancelled meanwhile: then cancel it, wait
        until it has really stopped (a half-done launch must not outlive the cleanup that
        follows), and stop the attempt."""
        task = asyncio.ensure_future(call)
        await workflow.wait_condition(lambda: task.done() or self.cancel_requested)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _Cancelled()
        return task.result()

    async def _sleep(self, delay: timedelta) -> None:
        try:
            await workflow.wait_condition(lambda: self.cancel_requested, timeout=delay)
        except TimeoutError:
            return
        raise _Cancelled()

    async def _save_logs(self, handle: ClusterHandle, dest: str) -> None:
        with contextlib.suppress(ActivityError):
            await calls.QUICK.run(
                "save_logs", SaveLogsInput(handle=handle, job_id=JOB_ON_CLUSTER, dest=dest)
            )

    async def _terminate(self, name: str) -> None:
        ref = self.live.get(name)
        if ref is None:
            return
        await calls.PROVISION.run("terminate_nodes", ref)
        del self.live[name]
        self._event(f"terminated {name}")

    def _set(self, status: ManagedJobStatus, reason: str | None = None) -> None:
        changed = status is not self.view.status
        self.view.status = status
        if reason is not None:
            self.view.reason = reason
        if changed:
            self._event(status.value + (f": {reason}" if reason else ""))
            workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])
            self._memo()

    def _memo(self) -> None:
        workflow.upsert_memo(
            {
                "recovery_count": self.view.recovery_count,
                "cluster": self.view.cluster,
                "infra": self.view.infra,
                "reason": self.view.reason,
            }
        )

    def _event(self, text: str) -> None:
        self.view.events.append(f"{workflow.now().isoformat(timespec='seconds')} {text}")
        del self.view.events[:-_MAX_EVENTS]


def _message(err: BaseException) -> str:
    cause = application_error(err)
    return cause.message if cause is not None else str(err)
