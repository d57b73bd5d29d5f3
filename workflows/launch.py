"""The one launch path of every node skyloom starts (a cluster, each managed-job attempt,
and next each service replica):

    candidates → placements (infra, region, zone) → provision → sync → setup → run

The order of placements is a pure policy (policies.order_placements); a placement that
gives no nodes (a typed capacity, quota, credentials or reachability error) is cleaned up
and the next one is tried; when all are exhausted the caller gets every attempt and why.
Phases are started on the nodes and then waited for through the watcher's signals
(`PhaseWatch`), never by holding an activity: a waiting workflow writes no history and
takes no worker thread.

Deterministic code only: it runs inside the workflows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from skyloom.activities import models as m
    from skyloom.activities.errors import ErrorKind, kind_of, message_of, where_of
    from skyloom.activities.models import (
        Candidate,
        ClusterHandle,
        ClusterRef,
        LaunchAttempt,
        NodeState,
        Observation,
        ObserveInput,
        PhaseInput,
        PhaseState,
        Placement,
        PlanInput,
        ProvisionInput,
    )
    from skyloom.workflows import calls, policies
    from skyloom.workflows.recovery import Ending

T = TypeVar("T")
Step = Callable[[Awaitable[T]], Awaitable[T]]

# A created cluster whose nodes are still booting is described after these pauses (soon
# at first: a node up within a second or two is not kept waiting 5 s), then every 5 s,
# for this long.
_UP_POLLS = tuple(timedelta(seconds=s) for s in (0.5, 1, 2, 3))
_UP_POLL = timedelta(seconds=5)
_UP_DEADLINE = timedelta(minutes=20)


async def _plain(call: Awaitable[T]) -> T:
    return await call


class LaunchFailed(Exception):
    """No placement gave nodes. `invalid`: the request itself was refused (bad infra,
    unknown pool, more nodes than the infra has), so retrying later cannot help."""

    def __init__(self, attempts: list[LaunchAttempt], invalid: bool) -> None:
        self.attempts = attempts
        self.invalid = invalid
        what = "the request was refused" if invalid else "no placement had capacity"
        super().__init__(f"{what}; tried:\n{policies.failover_table(attempts)}")


class Stopped(Exception):
    """The workflow stopped waiting (the job is being cancelled)."""


class Pause(Exception):
    """Time to continue as new; the phase goes on and is picked up by the next run."""


@dataclass
class Launcher:
    """Plans and provisions one cluster's nodes for one owner, with failover."""

    cluster: str
    owner: str
    num_nodes: int
    candidates: list[Candidate]
    ordered: bool
    # Told before each placement is tried (what to clean up if the workflow stops now).
    on_try: Callable[[ClusterRef], None] = lambda ref: None
    # Told after each placement that gave no nodes, and each candidate the plan refused.
    on_attempt: Callable[[LaunchAttempt], None] = lambda attempt: None
    # Wraps every activity call (a managed job uses it to stop on cancel).
    step: Callable[[Awaitable], Awaitable] = _plain
    # True when the launch is to stop (a down, a cancel): waiting for nodes to boot then
    # ends at once with Stopped, and the caller removes what was made.
    stop: Callable[[], bool] = lambda: False
    attempts: list[LaunchAttempt] = field(default_factory=list)

    def _record(self, attempt: LaunchAttempt) -> None:
        self.attempts.append(attempt)
        self.on_attempt(attempt)

    async def plan(self) -> list[Placement]:
        """Every placement to try, in order; LaunchFailed when there is none. Candidates
        that place themselves (local, an SSH pool) need no offers: no activity, and the
        provider's create refuses what cannot be done there."""
        direct = policies.direct_placements(self.candidates)
        if direct is not None:
            return direct
        result = await self.step(
            calls.QUICK.run(
                m.PLAN_LAUNCH,
                PlanInput(
                    cluster=self.cluster, num_nodes=self.num_nodes, candidates=self.candidates
                ),
            )
        )
        placements, refused = policies.order_placements(result, self.ordered)
        for attempt in refused:
            self._record(attempt)
        if not placements:
            invalid = any(a.kind == ErrorKind.INVALID_SPEC.value for a in refused)
            raise LaunchFailed(list(self.attempts), invalid)
        return placements

    async def provision(
        self, placements: list[Placement], order: list[int] | None = None
    ) -> tuple[ClusterHandle, int]:
        """Nodes from the first placement (in `order`, by index) that gives them; each
        one that fails is cleaned up before the next is tried."""
        for idx in order if order is not None else range(len(placements)):
            placement = placements[idx]
            cand = self.candidates[placement.candidate]
            offer = placement.offer
            # The offer's place, as precise as it is (`aws/us-east-1/us-east-1a`, `local`
            # for a `*` candidate): cleanup then needs no search across regions.
            infra = offer.where or cand.infra
            ref = ClusterRef(cluster=self.cluster, infra=infra, owner=self.owner)
            self.on_try(ref)
            try:
                handle = await self.step(
                    calls.PROVISION.run(
                        m.PROVISION,
                        ProvisionInput(
                            cluster=self.cluster,
                            infra=infra,
                            num_nodes=self.num_nodes,
                            owner=self.owner,
                            resources=cand.resources,
                            offer=offer,
                        ),
                    )
                )
                up = await self._until_up(handle)
                if up is not None:
                    return up, idx
                kind, why = ErrorKind.NO_CAPACITY.value, f"nodes not up after {_UP_DEADLINE}"
            except ActivityError as e:
                if isinstance(e.cause, CancelledError):
                    raise  # the workflow is being cancelled: no next placement
                kind = str(kind_of(e) or "Error")
                why = message_of(e)
                if where_of(e).region:
                    offer = offer.model_copy(update={"region": where_of(e).region})
            # Partial launches are cleaned up before the next placement is tried; one that
            # cannot be is said in the table (the next placement is still worth trying).
            try:
                await self.step(calls.PROVISION.run(m.TERMINATE_NODES, ref))
            except ActivityError as e:
                why += f" (and its cleanup failed, nodes may be left: {message_of(e)})"
            self._record(
                LaunchAttempt(
                    infra=offer.infra or cand.infra,
                    region=offer.region,
                    zone=offer.zone,
                    instance_type=offer.instance_type,
                    kind=kind,
                    message=why,
                )
            )
        refused = (ErrorKind.INVALID_SPEC.value, ErrorKind.NOT_SUPPORTED.value)
        invalid = bool(self.attempts) and all(a.kind in refused for a in self.attempts)
        raise LaunchFailed(list(self.attempts), invalid=invalid)

    async def _until_up(self, handle: ClusterHandle) -> ClusterHandle | None:
        """The handle once no node is pending (clouds boot; local and SSH nodes are up at
        once and cost no look), or None past the deadline."""
        waited = timedelta(0)
        polls = 0
        while any(n.state is NodeState.PENDING for n in handle.nodes):
            if waited >= _UP_DEADLINE:
                return None
            pause = _UP_POLLS[polls] if polls < len(_UP_POLLS) else _UP_POLL
            polls += 1
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self.stop, timeout=pause)
            if self.stop():
                raise Stopped()
            waited += pause
            ref = ClusterRef(
                cluster=handle.cluster, infra=handle.infra, handle=handle, owner=handle.owner
            )
            handle = await self.step(calls.QUICK.run(m.DESCRIBE_NODES, ref))
        return handle


@dataclass
class PhaseOutcome:
    ending: Ending
    # Per rank that ended: its exit code, None when killed or cut off.
    codes: list[int | None]
    failed_rank: int | None = None
    reason: str | None = None
    # The failed rank's exit code (None: killed, cut off, or no failure).
    exit_code: int | None = None


class PhaseWatch:
    """What the watcher told a workflow about its clusters' phases and nodes, and waiting
    on it."""

    def __init__(self, observed: list[Observation] | None = None) -> None:
        self.observed: dict[tuple, Observation] = {o.key: o for o in observed or []}

    def observe(self, observations: list[Observation]) -> None:
        for o in observations:
            self.observed[o.key] = o

    def forget(self, cluster: str) -> None:
        """Drop what is known about a cluster that is gone (keeps carried state small)."""
        self.observed = {k: o for k, o in self.observed.items() if o.cluster != cluster}

    def known(self) -> list[Observation]:
        return list(self.observed.values())

    def preempted(self, handle: ClusterHandle) -> bool:
        return any((handle.cluster, n.rank, None, None) in self.observed for n in handle.nodes)

    def outcome(
        self, handle: ClusterHandle, job_id: int, phase: m.Phase, num_nodes: int
    ) -> PhaseOutcome | None:
        """How the phase ended on the nodes, or None while it has not.

        A phase that exited 0 on every rank succeeded, whatever happens to its nodes
        afterwards (a preemption seen with or after the last exit must not undo it).
        Otherwise a preempted node ends it PREEMPTED; one failed, killed or cut-off rank
        ends it FAILED (a distributed job cannot go on without a rank)."""
        codes: list[int | None] = []
        first_failure: tuple[int, Observation] | None = None
        pending = False
        for rank in range(num_nodes):
            o = self.observed.get((handle.cluster, rank, job_id, phase.value))
            if o is None:
                pending = True
                continue
            code = o.exit_code if o.state == PhaseState.EXITED else None
            codes.append(code)
            if code != 0 and first_failure is None:
                first_failure = (rank, o)
        if not pending and first_failure is None:
            return PhaseOutcome(Ending.SUCCEEDED, codes)
        if self.preempted(handle):
            return PhaseOutcome(Ending.PREEMPTED, codes, reason="preempted")
        if first_failure is not None:
            rank, o = first_failure
            reason = o.reason or (
                f"failed on node {rank}"
                if o.state == PhaseState.EXITED
                else f"node {rank}: the {phase.value} process was killed"
            )
            return PhaseOutcome(Ending.FAILED, codes, rank, reason, o.exit_code)
        return None

    async def run(
        self,
        inp: PhaseInput,
        ref: ClusterRef,
        *,
        check_every: timedelta,
        stop: Callable[[], bool],
        pause: Callable[[], bool] = lambda: False,
        step: Callable[[Awaitable], Awaitable] = _plain,
        started: bool = False,
    ) -> PhaseOutcome:
        """Start the phase on its nodes (unless `started`: a continued run picks up a
        phase already running) and wait until it ends. With no news for `check_every`,
        look at the nodes once (the safety net when no watcher runs).
        Raises Stopped when stop() turns true, Pause when pause() does."""
        if not started:
            await step(calls.QUICK.run(m.START_PHASE, inp))
        handle, job, phase, n = inp.handle, inp.job_id, inp.phase, inp.num_nodes
        while True:
            if stop():
                raise Stopped()
            out = self.outcome(handle, job, phase, n)
            if out is not None:
                return out
            if pause():
                raise Pause()
            try:
                await workflow.wait_condition(
                    lambda: stop() or pause() or self.outcome(handle, job, phase, n) is not None,
                    timeout=check_every,
                )
            except TimeoutError:
                with contextlib.suppress(ActivityError):
                    seen = await step(
                        calls.QUICK.run(
                            m.OBSERVE_CLUSTER, ObserveInput(ref=ref, job_id=job, phase=phase)
                        )
                    )
                    self.observe(seen)
