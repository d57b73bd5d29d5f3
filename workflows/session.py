"""A client session (`skyloom-session-<uuid>`): what only a worker can do, asked by a
client that talks to nothing but the engine.

A CLI on a laptop has no cloud credentials, SSH keys, node files or pool files: it reads
logs, checks infra, plans a launch and simulates a preemption through the workers. One
session per CLI command (started with its first update, in one round trip); each update
runs one activity on a worker and returns its result. The session ends when its client
says so (`close`) or after it has been idle a while, and continues as new when long.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from skyloom.activities import models as m
    from skyloom.activities.models import (
        CheckInput,
        CheckReport,
        GpuReport,
        LogChunk,
        LogsInput,
        PlanInput,
        PlanResult,
        PreemptInput,
        RefreshCatalogInput,
        RefreshCatalogReport,
        SavedLogs,
        SavedLogsInput,
        ShowGpusInput,
    )
    from skyloom.spec.names import name_problem
    from skyloom.workflows import calls
    from skyloom.workflows.models import (
        CLOSE_SIGNAL,
        SESSION_WORKFLOW,
        PreemptRequest,
        SessionInput,
        SessionUpdate,
    )

R = TypeVar("R")

# A long poll may not hold a worker thread longer than this.
_MAX_WAIT_SECONDS = 20.0
# Base64 in a payload: well under the engine's 2 MB payload limit.
_MAX_LOG_BYTES = 1 << 20


@workflow.defn(name=SESSION_WORKFLOW)
class SessionWorkflow:
    @workflow.init
    def __init__(self, inp: SessionInput) -> None:
        self.closed = False
        self.last = workflow.now()
        self.busy = 0

    @workflow.run
    async def run(self, inp: SessionInput) -> None:
        idle = timedelta(seconds=max(5.0, min(inp.idle_seconds, 3600.0)))
        while not self.closed:
            try:
                await workflow.wait_condition(self._news_since(self.last), timeout=idle)
            except TimeoutError:
                if self.busy == 0:
                    break
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(inp)
        await workflow.wait_condition(workflow.all_handlers_finished)

    def _news_since(self, seen: datetime) -> Callable[[], bool]:
        return lambda: (
            self.closed or self.last != seen or workflow.info().is_continue_as_new_suggested()
        )

    @workflow.signal(name=CLOSE_SIGNAL)
    def close(self) -> None:
        self.closed = True

    def _touch(self) -> None:
        self.last = workflow.now()

    async def _call(self, call: Awaitable[R]) -> R:
        self._touch()
        self.busy += 1
        try:
            return await call
        finally:
            self.busy -= 1
            self._touch()

    @workflow.update(name=SessionUpdate.PLAN)
    async def plan(self, inp: PlanInput) -> PlanResult:
        result: PlanResult = await self._call(calls.CLIENT.run(m.PLAN_LAUNCH, inp))
        return result

    @plan.validator
    def _validate_plan(self, inp: PlanInput) -> None:
        problem = name_problem(inp.cluster)
        if problem:
            raise ValueError(f"cluster: {problem}")

    @workflow.update(name=SessionUpdate.CHECK)
    async def check(self, inp: CheckInput) -> CheckReport:
        report: CheckReport = await self._call(calls.CLIENT.run(m.CHECK_INFRA, inp))
        return report

    @workflow.update(name=SessionUpdate.PREEMPT)
    async def preempt(self, inp: PreemptRequest) -> None:
        await self._call(
            calls.CLIENT.run(m.PREEMPT_CLUSTER, PreemptInput(cluster=inp.cluster, infra=inp.infra))
        )

    @preempt.validator
    def _validate_preempt(self, inp: PreemptRequest) -> None:
        problem = inp.problems()
        if problem:
            raise ValueError(problem)

    @workflow.update(name=SessionUpdate.READ_LOGS)
    async def read_logs(self, inp: LogsInput) -> LogChunk:
        bounded = inp.model_copy(
            update={
                "wait_seconds": min(max(inp.wait_seconds, 0.0), _MAX_WAIT_SECONDS),
                "max_bytes": min(max(inp.max_bytes, 1), _MAX_LOG_BYTES),
            }
        )
        chunk: LogChunk = await self._call(calls.CLIENT.run(m.READ_LOGS, bounded))
        return chunk

    @read_logs.validator
    def _validate_read_logs(self, inp: LogsInput) -> None:
        if inp.offset < 0 or inp.rank < 0:
            raise ValueError("offset and rank must not be negative")

    @workflow.update(name=SessionUpdate.SAVED_LOGS)
    async def saved_logs(self, inp: SavedLogsInput) -> SavedLogs:
        logs: SavedLogs = await self._call(calls.CLIENT.run(m.SAVED_LOGS, inp))
        return logs

    @workflow.update(name=SessionUpdate.SHOW_GPUS)
    async def show_gpus(self, inp: ShowGpusInput) -> GpuReport:
        report: GpuReport = await self._call(calls.CLIENT.run(m.SHOW_GPUS, inp))
        return report

    @workflow.update(name=SessionUpdate.REFRESH_CATALOG)
    async def refresh_catalog(self, inp: RefreshCatalogInput) -> RefreshCatalogReport:
        report: RefreshCatalogReport = await self._call(calls.REFRESH.run(m.REFRESH_CATALOG, inp))
        return report
