"""Fake activities for the workflow tests, registered under the real activity names.

One in-memory cloud: it records every call, refuses placements as told (no capacity,
invalid), and plays the watcher: a phase whose ending is scripted (`release`) is
signalled to its workflow as soon as it has started, so no test waits on real time.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from skyloom.activities import models as m
from skyloom.activities.errors import ErrorKind, Where, provider_error
from skyloom.activities.models import (
    OBSERVE_SIGNAL,
    CandidatePlan,
    Capability,
    ClusterHandle,
    ClusterRef,
    KillInput,
    NodeInfo,
    NodeState,
    Observation,
    ObserveInput,
    Offer,
    PhaseInput,
    PhaseState,
    PlanInput,
    PlanResult,
    ProvisionInput,
    SaveLogsInput,
    SyncInput,
)
from temporalio import activity
from temporalio.client import Client

ALL_CAPABILITIES = sorted(Capability)


class FakeCloud:
    def __init__(self) -> None:
        self.client: Client | None = None
        self.calls: Counter[str] = Counter()
        self.live: set[str] = set()
        self.launched: list[tuple[str, str]] = []
        self.phases: list[PhaseInput] = []
        self.killed: list[int] = []
        # Infras that refuse: at provision (no capacity, or the given kind), at plan.
        self.no_capacity: set[str] = set()
        self.launch_error: ErrorKind | None = None
        self.invalid: set[str] = set()
        self.terminate_error: ErrorKind | None = None
        self.capabilities: list[Capability] = ALL_CAPABILITIES
        self.block_launch = asyncio.Event()
        self.block_launch.set()
        self.block_stop = asyncio.Event()
        self.block_stop.set()
        self.preempted: set[str] = set()
        # Nodes made while True stay PENDING (a cloud's VMs that never finish booting).
        self.booting = False
        # What observe_cluster finds on the nodes (the safety-net look).
        self.observed: list[Observation] = []
        # (job, phase) → exit code per rank: signalled when the phase has started.
        self.scripts: dict[tuple[int, str], list[int | None]] = {}
        self._signals: set[asyncio.Task] = set()

    # ---- scripting -------------------------------------------------------------------

    def release(self, job: int, phase: str, codes: list[int | None]) -> None:
        """The phase (of whichever cluster runs it) ends with these codes per rank."""
        self.scripts[(job, phase)] = codes
        for p in self.phases:
            if (p.job_id, p.phase.value) == (job, phase):
                task = asyncio.ensure_future(self._signal(p, codes))
                self._signals.add(task)
                task.add_done_callback(self._signals.discard)

    async def _signal(self, p: PhaseInput, codes: list[int | None]) -> None:
        assert self.client is not None and p.notify
        obs = [ended(p, code, rank) for rank, code in enumerate(codes)]
        await self.client.get_workflow_handle(p.notify).signal(OBSERVE_SIGNAL, obs)

    @property
    def alive(self) -> bool:
        return bool(self.live)

    def started(self, phase: m.Phase | None = None) -> list[PhaseInput]:
        return [p for p in self.phases if phase is None or p.phase is phase]

    # ---- activities ------------------------------------------------------------------

    @activity.defn(name=m.PLAN_LAUNCH.name)
    async def plan_launch(self, inp: PlanInput) -> PlanResult:
        self.calls["plan"] += 1
        out = []
        for i, c in enumerate(inp.candidates):
            if c.infra in self.invalid:
                out.append(
                    CandidatePlan(
                        candidate=i,
                        infra=c.infra,
                        error_kind=ErrorKind.INVALID_SPEC.value,
                        error=f"no such infra {c.infra}",
                        error_field="resources.infra",
                    )
                )
            else:
                offer = Offer(infra=c.infra, capabilities=self.capabilities)
                out.append(CandidatePlan(candidate=i, infra=c.infra, offers=[offer]))
        return PlanResult(candidates=out)

    @activity.defn(name=m.PROVISION.name)
    async def provision(self, inp: ProvisionInput) -> ClusterHandle:
        self.calls["provision"] += 1
        await self.block_launch.wait()
        if self.launch_error:
            raise provider_error(self.launch_error, "no capacity in fake")
        if inp.infra in self.invalid:
            raise provider_error(ErrorKind.INVALID_SPEC, f"no such infra {inp.infra}")
        if inp.infra in self.no_capacity:
            raise provider_error(
                ErrorKind.NO_CAPACITY, f"{inp.infra} is full", where=Where(region="r1")
            )
        self.live.add(inp.cluster)
        self.launched.append((inp.cluster, inp.infra))
        state = NodeState.PENDING if self.booting else NodeState.UP
        nodes = [
            NodeInfo(rank=i, node_id=f"{inp.cluster}-{i}", root=f"/fake/{i}", state=state)
            for i in range(inp.num_nodes)
        ]
        return ClusterHandle(
            cluster=inp.cluster,
            infra=inp.infra,
            nodes=nodes,
            owner=inp.owner,
            capabilities=self.capabilities,
        )

    @activity.defn(name=m.DESCRIBE_NODES.name)
    async def describe_nodes(self, ref: ClusterRef) -> ClusterHandle:
        assert ref.handle is not None
        self.calls["describe"] += 1
        return ref.handle

    @activity.defn(name=m.SYNC_FILES.name)
    async def sync_files(self, inp: SyncInput) -> None:
        self.calls["sync"] += 1

    @activity.defn(name=m.START_PHASE.name)
    async def start_phase(self, inp: PhaseInput) -> None:
        self.calls["start_phase"] += 1
        self.phases.append(inp)
        codes = self.scripts.get((inp.job_id, inp.phase.value))
        if codes is not None:
            await self._signal(inp, codes)

    @activity.defn(name=m.OBSERVE_CLUSTER.name)
    async def observe_cluster(self, inp: ObserveInput) -> list[Observation]:
        self.calls["observe"] += 1
        assert inp.ref.handle is not None
        name = inp.ref.handle.cluster
        out = [o for o in self.observed if o.cluster == name]
        if name in self.preempted:
            out.append(Observation(cluster=name, rank=0, state=NodeState.PREEMPTED))
        return out

    @activity.defn(name=m.SAVE_LOGS.name)
    async def save_logs(self, inp: SaveLogsInput) -> None:
        self.calls["save_logs"] += 1

    @activity.defn(name=m.KILL_JOB.name)
    async def kill_job(self, inp: KillInput) -> None:
        self.calls["kill"] += 1
        self.killed.append(inp.job_id)

    @activity.defn(name=m.STOP_NODES.name)
    async def stop_nodes(self, ref: ClusterRef) -> None:
        self.calls["stop"] += 1
        await self.block_stop.wait()

    @activity.defn(name=m.START_NODES.name)
    async def start_nodes(self, ref: ClusterRef) -> ClusterHandle:
        self.calls["start"] += 1
        assert ref.handle is not None
        return ref.handle

    @activity.defn(name=m.TERMINATE_NODES.name)
    async def terminate_nodes(self, ref: ClusterRef) -> None:
        self.calls["terminate"] += 1
        if self.terminate_error:
            raise provider_error(self.terminate_error, "host h1 gone", non_retryable=True)
        self.live.discard(ref.cluster)

    def all(self) -> list:
        return [
            self.plan_launch,
            self.provision,
            self.describe_nodes,
            self.sync_files,
            self.start_phase,
            self.observe_cluster,
            self.save_logs,
            self.kill_job,
            self.stop_nodes,
            self.start_nodes,
            self.terminate_nodes,
        ]


def ended(
    p: PhaseInput, code: int | None = 0, rank: int = 0, owner: str | None = None
) -> Observation:
    state = PhaseState.EXITED if code is not None else PhaseState.KILLED
    return Observation(
        cluster=p.handle.cluster, rank=rank, state=state, job_id=p.job_id, phase=p.phase,
        exit_code=code, owner=owner or p.handle.owner,
    )  # fmt: skip


def preempted(p: PhaseInput, rank: int = 0) -> Observation:
    return Observation(cluster=p.handle.cluster, rank=rank, state=NodeState.PREEMPTED)
