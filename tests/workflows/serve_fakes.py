"""Fakes for the service workflow's tests: FakeCloud plus the serving loop and the load
balancer's removal, registered under the real activity names.

The fake serving loop plays activities/serve/replicas.py. The first call (no port yet)
returns the load balancer's port at once. A later call returns when a replica's
readiness, as the test sets it (`set_ready`), differs from what the workflow believes
(`ProbeTarget.ready`), or when the test asks for a report (`report`), with the load
balancer's request counter; the counter grows at a rate the test sets (`set_rate`), in
the test server's time.

Two limits of the time-skipping test server shape it:

- A workflow that cancels an activity which completed while its task ran is stuck there
  ("ACTIVITY_UNKNOWN", temporalio/sdk-java#2391; the real server records the cancel and
  goes on), and the workflow replaces its serving call whenever the replica set changes.
  So a call returns only when nothing else goes on: no workflow task and no other
  activity in flight (read from the history), no fake activity or signal just now; a
  call the workflow replaced returns at once with nothing to say.
- The server skips no time while an activity runs, and the serving loop always runs.
  While the test skips time (`sleep`), a call with nothing to say fails instead (when
  nothing else goes on, so it is never one being cancelled: a retry of a cancelled call
  holds the server's clock), and its retry comes when the skip ends, or when the next
  report is due (`skip_report_seconds`, what a real loop does every report_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta

from skyloom.activities import models as m
from skyloom.activities.errors import ErrorKind, provider_error
from skyloom.activities.models import (
    ClusterHandle,
    ClusterRef,
    PhaseInput,
    ProvisionInput,
    ReplicaProbe,
    ServeInput,
    ServeReport,
    ServiceRef,
)
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflows.fakes import FakeCloud

LB_HOST = "lb.test"
LB_PORT = 30123
# Real seconds after another fake activity, a signal or an update (before the history
# shows it) before a serving call may return.
QUIET_SECONDS = 0.05
_TICK = 0.01
_WFT = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: True,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: True,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: False,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: False,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: False,
}
_ACTIVITY_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


class ServeCloud(FakeCloud):
    def __init__(self) -> None:
        super().__init__()
        self.env: WorkflowEnvironment | None = None
        self.provisioned: list[ProvisionInput] = []
        self.terminated: list[str] = []
        # Where each node's serving port lands (NodeInfo.ports), as the local infra does.
        self.port_map: dict[int, int] = {}
        # No spot capacity anywhere: spot provisions fail as a cloud's would.
        self.no_spot = False
        # ---- the serving loop
        # Every call (not every retry of one), in order, and by generation the clusters
        # whose run phase had been started when it came.
        self.serve_inputs: list[ServeInput] = []
        self.runs_started_at_call: dict[int, set[str]] = {}
        self.lb_removed: list[str] = []
        # What a probe of each replica finds (by replica id; the default for the rest),
        # and the error a failing probe gives.
        self.ready_default = True
        self.ready: dict[int, bool] = {}
        self.probe_error = "answered 503"
        # The counter: `rate` requests a second of server time since `rate_since`, on top
        # of `base`.
        self.base = 0.0
        self.rate = 0.0
        self.rate_since: datetime | None = None
        self.reports_wanted = 0
        self.reports = 0
        # While skipping time, one call reports the counter every this many seconds.
        self.skip_report_seconds: float | None = None
        self.skip = False
        self._skip_until = datetime.min
        self._last_report: datetime | None = None
        self._running = 0
        self._last_busy = 0.0

    # ---- scripting -------------------------------------------------------------------

    def set_ready(self, rid: int, ready: bool) -> None:
        self.ready[rid] = ready

    async def set_rate(self, qps: float) -> None:
        """From now on (server time), `qps` requests a second."""
        now = await self.now()
        self.base = self._count(now)
        self.rate, self.rate_since = qps, now

    async def report(self) -> None:
        """Have the serving loop report the request counter once, and wait until the
        workflow took the report (it calls the loop again right after)."""
        calls = len(self.serve_inputs)
        self.reports_wanted += 1
        for _ in range(1000):
            if self.reports >= self.reports_wanted and len(self.serve_inputs) > calls:
                return
            await asyncio.sleep(_TICK)
        raise AssertionError("the serving loop never reported")

    async def sleep(self, seconds: float) -> None:
        """Skip `seconds` of server time, the serving loop going on meanwhile."""
        assert self.env is not None
        self._skip_until = await self.now() + timedelta(seconds=seconds)
        self.skip = True
        try:
            await self.env.sleep(seconds)
        finally:
            self.skip = False

    async def now(self) -> datetime:
        assert self.env is not None
        return await self.env.get_current_time()

    def touch(self) -> None:
        """Something happened to the workflow (a signal, an update): no serving call
        returns for a moment."""
        self._last_busy = asyncio.get_running_loop().time()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self._running += 1
        self.touch()
        try:
            yield
        finally:
            self._running -= 1
            self.touch()

    def serve_calls(self) -> list[ServeInput]:
        """The calls of the loop proper (the first one only asks for a port)."""
        return [i for i in self.serve_inputs if i.lb_port is not None]

    def provisions(self, cluster: str) -> int:
        return sum(1 for p in self.provisioned if p.cluster == cluster)

    # ---- helpers ---------------------------------------------------------------------

    def _count(self, now: datetime) -> float:
        if self.rate_since is None:
            return self.base
        return self.base + self.rate * max(0.0, (now - self.rate_since).total_seconds())

    def _changes(self, inp: ServeInput) -> list[ReplicaProbe]:
        out = []
        for t in inp.replicas:
            ready = self.ready.get(t.id, self.ready_default)
            if ready != t.ready:
                out.append(
                    ReplicaProbe(id=t.id, ready=ready, error=None if ready else self.probe_error)
                )
        return out

    def _quiet(self) -> bool:
        loop = asyncio.get_running_loop()
        return self._running == 0 and loop.time() - self._last_busy >= QUIET_SECONDS

    def _newest(self, inp: ServeInput) -> bool:
        return inp.generation == max(i.generation for i in self.serve_inputs)

    async def _look(self) -> str:
        """`cancelled` once the workflow cancelled this call; `busy` while a workflow task
        or another activity is in flight (either may change the replica set, and with it
        cancel this call); else `idle`. No timer fires while this call runs: the server's
        clock stands still."""
        info = activity.info()
        assert self.client is not None and info.workflow_id is not None
        handle = self.client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        in_flight, mine, cancelled = False, None, False
        pending: set[int] = set()
        async for e in handle.fetch_history_events():
            t = e.event_type
            if t in _WFT:
                in_flight = _WFT[t]
            elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                pending.add(e.event_id)
                if e.activity_task_scheduled_event_attributes.activity_id == info.activity_id:
                    mine = e.event_id
            elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED:
                scheduled = e.activity_task_cancel_requested_event_attributes.scheduled_event_id
                cancelled = cancelled or scheduled == mine
                pending.discard(scheduled)
            elif t in _ACTIVITY_CLOSED:
                pending.discard(getattr(e, _ACTIVITY_CLOSED[t]).scheduled_event_id)
        if cancelled:
            return "cancelled"
        return "busy" if in_flight or pending - {mine} else "idle"

    def _report_due(self, now: datetime) -> bool:
        every = self.skip_report_seconds
        if every is None:
            return False
        last = self._last_report
        return last is None or now - last >= timedelta(seconds=every)

    async def _retry_delay(self) -> timedelta:
        until = self._skip_until - await self.now()
        if self.skip_report_seconds is not None:
            until = min(until, timedelta(seconds=self.skip_report_seconds))
        return max(until, timedelta(seconds=0.1))

    # ---- activities ------------------------------------------------------------------

    @activity.defn(name=m.PROVISION.name)
    async def provision(self, inp: ProvisionInput) -> ClusterHandle:
        with self.busy():
            self.provisioned.append(inp)
            if self.no_spot and inp.resources.get("use_spot"):
                raise provider_error(ErrorKind.NO_CAPACITY, "no spot capacity in fake")
            handle = await super().provision(inp)
            if self.port_map:
                for node in handle.nodes:
                    node.ports = dict(self.port_map)
            return handle

    @activity.defn(name=m.START_PHASE.name)
    async def start_phase(self, inp: PhaseInput) -> None:
        with self.busy():
            await super().start_phase(inp)

    @activity.defn(name=m.TERMINATE_NODES.name)
    async def terminate_nodes(self, ref: ClusterRef) -> None:
        with self.busy():
            self.terminated.append(ref.cluster)
            await super().terminate_nodes(ref)

    @activity.defn(name=m.SERVE_REPLICAS.name)
    async def serve_replicas(self, inp: ServeInput) -> ServeReport:
        if activity.info().attempt == 1:
            self.serve_inputs.append(inp)
            started = {p.handle.cluster for p in self.started(m.Phase.RUN)}
            self.runs_started_at_call[inp.generation] = started
        if inp.lb_port is None:
            return ServeReport(lb_host=LB_HOST, lb_port=LB_PORT)
        assert inp.lb_port == LB_PORT, inp
        while True:
            activity.heartbeat()
            if not self._newest(inp):
                # Replaced: the workflow cancelled it in the task that made the new one.
                return ServeReport(lb_host=LB_HOST, lb_port=LB_PORT)
            changes = self._changes(inp)
            news = bool(changes) or self.reports < self.reports_wanted
            if self.skip and not news:
                news = self._report_due(await self.now())
            if (news or self.skip) and self._quiet():
                look = await self._look()
                if look == "cancelled":
                    return ServeReport(lb_host=LB_HOST, lb_port=LB_PORT)
                if look == "idle" and news:
                    now = await self.now()
                    self.reports = self.reports_wanted
                    self._last_report = now
                    return ServeReport(
                        lb_host=LB_HOST,
                        lb_port=LB_PORT,
                        changes=changes,
                        requests=int(self._count(now)),
                    )
                if look == "idle":
                    raise ApplicationError(
                        "the fake load balancer lets the server skip time",
                        next_retry_delay=await self._retry_delay(),
                    )
            await asyncio.sleep(_TICK)

    @activity.defn(name=m.REMOVE_LOAD_BALANCER.name)
    async def remove_load_balancer(self, ref: ServiceRef) -> None:
        with self.busy():
            self.lb_removed.append(ref.service)

    def all(self) -> list:
        # FakeCloud.all() lists this class's provision, start_phase and terminate_nodes.
        return [*super().all(), self.serve_replicas, self.remove_load_balancer]
