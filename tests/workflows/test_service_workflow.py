"""The service workflow on the time-skipping test server, with fake activities under the
real names (tests/workflows/serve_fakes.py): replicas launched through the launch path,
readiness from the fake serving loop, failed and preempted replicas replaced, a version
that never gets ready, the autoscaler's delays as workflow timers, rolling and blue-green
updates, down, bad inputs refused, and continue-as-new carrying the replica set.

The test plays the watcher (it signals a replica's server ending, its nodes preempted)
and the replicas' readiness probes (`cloud.set_ready`); time is skipped with
`cloud.sleep`, which keeps the serving loop going while the server's clock jumps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from skyloom.activities.models import Candidate, Observation, Phase, PhaseInput, ProbeSpec
from skyloom.workflows import search
from skyloom.workflows.autoscaler import ScalePolicy
from skyloom.workflows.models import (
    OBSERVE_SIGNAL,
    DownServiceInput,
    JobSpec,
    ManagedTask,
    ReplicaStatus,
    ReplicaView,
    ServiceInput,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
    ServiceUpdate,
    ServiceView,
    UpdateServiceInput,
    UpdateServiceResult,
)
from skyloom.workflows.service import ServiceWorkflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Worker

from tests.workflows.fakes import ended, preempted
from tests.workflows.serve_fakes import LB_HOST, LB_PORT, ServeCloud

QUEUE = "test-service"
R = ReplicaStatus
S = ServiceStatus


class WorkflowStuck(AssertionError):
    """The workflow's tasks fail (a deadlock, an error in its code): it decides nothing
    more, and the test says so at once instead of waiting for a state never reached."""


# workflows/service.py `_shut_down` waits for the launches in flight before it marks the
# replicas SHUTTING_DOWN, so a launch that was provisioning when `down` came finds its
# replica still PROVISIONING in `_launch` and goes on to start the replica's server on
# nodes about to be terminated.

# workflows/service.py `_reconcile` (older versions): blue_green computes `keep =
# len(old)` but picks the kept replicas among the READY ones only, so an old replica that
# fails one probe during the update is drained at once (no failure_timeout grace, and
# the old version serves with fewer replicas until the new one is wholly READY).
# workflows/service.py `_reconcile` passes the current version's
# `probe.failure_timeout_seconds` to `_check_replica` for every replica, while
# `_next_due` and the serving loop use the replica's own version's probe.

AUTOSCALE = ScalePolicy(
    min_replicas=1,
    max_replicas=3,
    target_qps_per_replica=2,
    upscale_delay_seconds=60,
    downscale_delay_seconds=120,
)


@pytest.fixture
def cloud(env) -> ServeCloud:
    c = ServeCloud()
    c.client, c.env = env.client, env
    return c


def worker(env, cloud: ServeCloud) -> Worker:
    return Worker(env.client, task_queue=QUEUE, workflows=[ServiceWorkflow], activities=cloud.all())


def spec(
    replicas: int = 2, *, run: str = "serve", policy: ScalePolicy | None = None, **more
) -> ServiceSpec:
    return ServiceSpec(
        task=ManagedTask(spec=JobSpec(run=run), candidates=[Candidate(infra="local")]),
        port=8080,
        policy=policy or ScalePolicy.fixed(replicas),
        **more,
    )


async def start(env, s: ServiceSpec | None = None, **more) -> WorkflowHandle:
    name = f"s{uuid.uuid4().hex[:6]}"
    inp = ServiceInput(name=name, spec=s or spec(), **more)
    return await env.client.start_workflow(
        ServiceWorkflow.run, inp, id=f"service-{name}", task_queue=QUEUE
    )


def name_of(h: WorkflowHandle) -> str:
    return h.id.removeprefix("service-")


# ---- looking at the service -------------------------------------------------------------


async def view(h: WorkflowHandle) -> ServiceView:
    return await h.query("describe", result_type=ServiceView, rpc_timeout=timedelta(seconds=2))


def alive(v: ServiceView) -> list[ReplicaView]:
    return [r for r in v.replicas if r.status.alive]


def ready_ids(v: ServiceView) -> list[int]:
    return [r.id for r in v.replicas if r.status is R.READY]


def replica(v: ServiceView, rid: int) -> ReplicaView:
    return next(r for r in v.replicas if r.id == rid)


def status(v: ServiceView, rid: int) -> ReplicaStatus | None:
    found = [r.status for r in v.replicas if r.id == rid]
    return found[-1] if found else None


async def stuck(h: WorkflowHandle) -> str | None:
    """Why the workflow's last task failed, if one did."""
    async for e in h.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return e.workflow_task_failed_event_attributes.failure.message or "failed"
    return None


async def until(h: WorkflowHandle, pred: Callable[[ServiceView], bool], what: str) -> ServiceView:
    last = None
    for i in range(400):
        try:
            last = await view(h)
        except RPCError:
            last = None
        else:
            if pred(last):
                return last
        if last is None or i % 10 == 9:
            why = await stuck(h)
            if why:
                raise WorkflowStuck(f"never: {what}: the workflow is stuck: {why}")
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}; last: {last}")


async def skip(h: WorkflowHandle, cloud: ServeCloud, seconds: float) -> None:
    """Skip server time (timers fire; the serving loop goes on)."""
    why = await stuck(h)
    if why:
        raise WorkflowStuck(f"the workflow is stuck: {why}")
    await cloud.sleep(seconds)


async def skip_until(h: WorkflowHandle, cloud: ServeCloud, when: datetime) -> None:
    await skip(h, cloud, max(0.0, (when - await cloud.now()).total_seconds()))


async def attribute(h: WorkflowHandle, key: SearchAttributeKey[str], value: str) -> bool:
    """Whether the search attribute comes to be `value` (upserts land as tasks complete)."""
    for _ in range(200):
        if (await h.describe()).typed_search_attributes.get(key) == value:
            return True
        await asyncio.sleep(0.02)
    return False


async def run_started(cloud: ServeCloud, cluster: str) -> PhaseInput:
    for _ in range(400):
        found = [p for p in cloud.started(Phase.RUN) if p.handle.cluster == cluster]
        if found:
            return found[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"the run phase never started on {cluster}")


async def signal(h: WorkflowHandle, cloud: ServeCloud, obs: list[Observation]) -> None:
    cloud.touch()
    await h.signal(OBSERVE_SIGNAL, obs)
    cloud.touch()


async def update(
    h: WorkflowHandle, cloud: ServeCloud, s: ServiceSpec, mode: str = "rolling"
) -> UpdateServiceResult:
    cloud.touch()
    try:
        return await h.execute_update(
            ServiceUpdate.UPDATE,
            UpdateServiceInput(spec=s, mode=mode),
            result_type=UpdateServiceResult,
        )
    finally:
        cloud.touch()


def targets(cloud: ServeCloud, start: int = 0) -> list[list[tuple[int, bool]]]:
    """Each call of the serving loop (from the `start`-th): the replicas it probed and
    whether each was in the rotation."""
    return [[(t.id, t.ready) for t in c.replicas] for c in cloud.serve_calls()[start:]]


def in_order(wanted: list, got: list) -> bool:
    """Every item of `wanted` is in `got`, in that order (others may come between)."""
    it = iter(got)
    return all(any(w == g for g in it) for w in wanted)


# ---- up ------------------------------------------------------------------------------


async def test_up_launches_each_replica_through_the_launch_path_and_serves_it(env, cloud):
    cloud.port_map = {8080: 41000}  # the node's 8080 listens on 41000, as locally
    async with worker(env, cloud):
        h = await start(env)
        name = name_of(h)
        v = await until(h, lambda v: ready_ids(v) == [1, 2], "both replicas READY")
        assert v.status is S.READY and v.target_replicas == 2
        assert v.endpoint == f"http://{LB_HOST}:{LB_PORT}"
        assert sorted(p.cluster for p in cloud.provisioned) == [f"{name}-1", f"{name}-2"]
        for rid in (1, 2):
            p = await run_started(cloud, f"{name}-{rid}")
            assert (p.command, p.job_id, p.notify) == ("serve", 1, h.id)
            assert p.envs["SKYPILOT_SERVE_REPLICA_ID"] == str(rid)
            assert p.envs["SKYLOOM_REPLICA_PORT"] == "41000"
            assert p.envs["SKYLOOM_SERVICE_NAME"] == name
        assert [(r.address, r.infra) for r in alive(v)] == [("127.0.0.1:41000", "local")] * 2
        # The first call only asked for the load balancer's port.
        first = cloud.serve_inputs[0]
        assert (first.service, first.lb_port, first.replicas) == (name, None, [])
        assert await attribute(h, search.SA_STATUS, "READY")
        assert (await h.describe()).typed_search_attributes.get(search.SA_KIND) == "service"


# ---- the serving loop and readiness ----------------------------------------------------


async def test_the_serving_loop_probes_started_replicas_and_follows_their_readiness(env, cloud):
    probe = ProbeSpec(path="/health", failure_timeout_seconds=30)
    cloud.ready_default = False
    async with worker(env, cloud):
        h = await start(env, spec(probe=probe))
        name = name_of(h)
        for rid in (1, 2):
            await run_started(cloud, f"{name}-{rid}")
        v = await until(
            h, lambda v: [r.status for r in alive(v)] == [R.STARTING] * 2, "both STARTING"
        )
        cloud.set_ready(2, True)
        v = await until(h, lambda v: ready_ids(v) == [2], "2 READY")
        assert status(v, 1) is R.STARTING and v.status is S.READY
        cloud.set_ready(1, True)
        await until(h, lambda v: ready_ids(v) == [1, 2], "both READY")
        cloud.set_ready(1, False)
        v = await until(h, lambda v: status(v, 1) is R.NOT_READY, "1 NOT_READY")
        assert replica(v, 1).reason == "answered 503" and v.status is S.READY
        cloud.set_ready(1, True)
        v = await until(h, lambda v: ready_ids(v) == [1, 2], "1 READY again")
        await until(h, lambda v: targets(cloud)[-1] == [(1, True), (2, True)], "last call")

        calls = cloud.serve_calls()
        # Each replica set got a call of its own, none before the replicas' servers
        # started (the first call, right after the launches began, probed nothing).
        assert calls[0].replicas == []
        assert in_order(
            [
                [(1, False), (2, False)],
                [(1, False), (2, True)],
                [(1, True), (2, True)],
                [(1, False), (2, True)],
                [(1, True), (2, True)],
            ],
            targets(cloud),
        ), targets(cloud)
        assert all(a != b for a, b in zip(targets(cloud), targets(cloud)[1:], strict=False))
        for call in calls:
            probed = {f"{name}-{t.id}" for t in call.replicas}
            assert probed <= cloud.runs_started_at_call[call.generation], call
            assert (call.service, call.lb_port, call.policy) == (name, LB_PORT, "least_load")
            assert call.report_seconds == 30  # not autoscaling: only to show QPS
            for t in call.replicas:
                assert t.probe == probe and t.address == "127.0.0.1:8080"
        assert len({c.generation for c in calls}) == len(calls)


async def test_a_replica_failing_its_probe_past_the_failure_timeout_is_replaced(env, cloud):
    probe = ProbeSpec(failure_timeout_seconds=30)
    async with worker(env, cloud):
        h = await start(env, spec(probe=probe))
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "both READY")
        cloud.set_ready(1, False)
        await until(h, lambda v: status(v, 1) is R.NOT_READY, "1 NOT_READY")
        await skip(h, cloud, 20)
        v = await until(h, lambda v: True, "a look")
        assert status(v, 1) is R.NOT_READY  # out of the rotation, not yet given up on
        await skip(h, cloud, 20)  # past the failure timeout (and the launch retry gap)
        v = await until(h, lambda v: ready_ids(v) == [2, 3], "3 READY in 1's place")
        assert status(v, 1) is R.FAILED_PROBING and replica(v, 1).reason == "answered 503"
        assert f"{name}-1" in cloud.terminated and f"{name}-1" not in cloud.live
        assert cloud.provisions(f"{name}-3") == 1 and len(cloud.provisioned) == 3
        assert v.status is S.READY


async def test_a_replica_never_ready_within_the_initial_delay_is_replaced(env, cloud):
    cloud.ready_default = False
    async with worker(env, cloud):
        h = await start(env, spec(1, probe=ProbeSpec(initial_delay_seconds=60)))
        name = name_of(h)
        await run_started(cloud, f"{name}-1")
        await until(h, lambda v: status(v, 1) is R.STARTING, "1 STARTING")
        await skip(h, cloud, 50)
        v = await until(h, lambda v: True, "a look")
        assert status(v, 1) is R.STARTING and v.status is S.REPLICA_INIT
        await skip(h, cloud, 20)  # past the initial delay, and the launch retry gap
        v = await until(h, lambda v: status(v, 2) is R.STARTING, "2 in 1's place")
        assert status(v, 1) is R.FAILED_INITIAL_DELAY
        assert replica(v, 1).reason == "not ready within 60 s"
        assert f"{name}-1" in cloud.terminated and f"{name}-1" not in cloud.live
        cloud.set_ready(2, True)
        v = await until(h, lambda v: ready_ids(v) == [2], "2 READY")
        assert v.status is S.READY


async def test_an_old_replica_is_judged_by_the_probe_of_its_own_version(env, cloud):
    async with worker(env, cloud):
        h = await start(env, spec(probe=ProbeSpec(failure_timeout_seconds=300)))
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "v1 READY")
        cloud.ready.update({1: True, 2: True})
        cloud.ready_default = False  # v2 never answers: blue-green keeps v1 serving
        v2 = spec(probe=ProbeSpec(failure_timeout_seconds=30, initial_delay_seconds=50))
        assert (await update(h, cloud, v2, "blue_green")).version == 2
        for rid in (3, 4):
            await run_started(cloud, f"{name}-{rid}")
        cloud.set_ready(1, False)
        v = await until(h, lambda v: status(v, 1) is not R.READY, "1 out of the rotation")
        assert status(v, 1) is R.NOT_READY
        # v2's replicas give up at 50 s, and the service looks at every replica then.
        await skip(h, cloud, 60)
        v = await until(h, lambda v: status(v, 3) is R.FAILED_INITIAL_DELAY, "v2 gave up")
        assert status(v, 1) is R.NOT_READY  # v1's probe allows it 300 s


# ---- failures and preemptions ---------------------------------------------------------


async def test_a_replica_whose_server_exits_is_failed_and_replaced(env, cloud):
    async with worker(env, cloud):
        h = await start(env)
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "both READY")
        p = await run_started(cloud, f"{name}-1")
        await signal(h, cloud, [ended(p, 3)])
        v = await until(h, lambda v: status(v, 1) is R.FAILED, "1 FAILED")
        assert "exit code 3" in (replica(v, 1).reason or "")
        await skip(h, cloud, 10)  # the gap before a replica is launched again
        v = await until(h, lambda v: ready_ids(v) == [2, 3], "3 READY in 1's place")
        assert f"{name}-1" in cloud.terminated and f"{name}-1" not in cloud.live
        assert v.status is S.READY and len(cloud.provisioned) == 3


async def test_a_preempted_spot_replica_is_replaced_by_a_spot_replica(env, cloud):
    async with worker(env, cloud):
        h = await start(env, spec(1, spot=True))
        name = name_of(h)
        v = await until(h, lambda v: ready_ids(v) == [1], "1 READY")
        assert replica(v, 1).spot
        p = await run_started(cloud, f"{name}-1")
        await signal(h, cloud, [preempted(p)])
        v = await until(h, lambda v: ready_ids(v) == [2], "2 READY in 1's place")
        assert status(v, 1) is R.PREEMPTED and replica(v, 2).spot
        assert [q.resources.get("use_spot") for q in cloud.provisioned] == [True, True]
        assert f"{name}-1" in cloud.terminated and f"{name}-1" not in cloud.live


def spot_flags(cloud: ServeCloud) -> list[bool]:
    """use_spot of each provision, in order."""
    return [bool(p.resources.get("use_spot")) for p in cloud.provisioned]


async def test_base_ondemand_fallback_replicas_are_on_demand_the_rest_spot(env, cloud):
    policy = ScalePolicy(min_replicas=2, base_ondemand_fallback_replicas=1)
    async with worker(env, cloud):
        h = await start(env, spec(policy=policy, spot=True))
        name = name_of(h)
        v = await until(h, lambda v: ready_ids(v) == [1, 2], "both READY")
        assert sorted(r.spot for r in alive(v)) == [False, True]
        # The spot one is preempted: a spot one takes its place; the on-demand one stays.
        (spot,) = [r for r in alive(v) if r.spot]
        await signal(h, cloud, [preempted(await run_started(cloud, f"{name}-{spot.id}"))])
        v = await until(h, lambda v: len(ready_ids(v)) == 2 and spot.id not in ready_ids(v),
                        "a replacement READY")  # fmt: skip
        assert sorted(r.spot for r in alive(v)) == [False, True]
        assert spot_flags(cloud).count(False) == 1


async def test_dynamic_ondemand_fallback_serves_on_demand_until_spot_is_ready(env, cloud):
    cloud.no_spot = True
    policy = ScalePolicy(min_replicas=1, dynamic_ondemand_fallback=True)
    async with worker(env, cloud):
        h = await start(env, spec(policy=policy, spot=True))
        name = name_of(h)
        # No spot capacity: an on-demand replica stands in and serves.
        v = await until(h, lambda v: any(r.status is R.READY and not r.spot for r in v.replicas),
                        "an on-demand replica READY")  # fmt: skip
        (od,) = [r for r in alive(v) if not r.spot]
        assert any(r.status is R.FAILED_PROVISION and r.spot for r in v.replicas)
        assert v.status is S.READY  # the version served: spot failures do not fail it
        # Spot capacity comes back: a spot replica gets READY, then the stand-in goes.
        cloud.no_spot = False
        await skip(h, cloud, 400)
        v = await until(h, lambda v: [r.spot for r in alive(v)] == [True] and bool(ready_ids(v)),
                        "only a spot replica, READY")  # fmt: skip
        assert f"{name}-{od.id}" in cloud.terminated
        assert spot_flags(cloud).count(False) == 1


async def test_a_version_that_never_gets_ready_fails_the_service_until_updated(env, cloud):
    cloud.release(1, "run", [1])  # every replica's server exits at once
    async with worker(env, cloud):
        h = await start(env, spec(1), max_failures=3)
        await until(h, lambda v: status(v, 1) is R.FAILED, "1 FAILED")
        await skip(h, cloud, 60)  # retry gaps of 5 and 10 s, then no more launches
        v = await until(h, lambda v: v.status is S.FAILED, "service FAILED")
        assert [r.status for r in v.replicas] == [R.FAILED] * 3 and not alive(v)
        assert "serve update" in (v.reason or "")
        assert len(cloud.provisioned) == 3 and not cloud.live
        await skip(h, cloud, 60)
        assert len(cloud.provisioned) == 3  # it stopped launching

        cloud.scripts.clear()  # the fixed version's server keeps running
        assert (await update(h, cloud, spec(1, run="fixed"))).version == 2
        v = await until(h, lambda v: ready_ids(v) == [4], "the new version READY")
        assert v.status is S.READY and v.version == 2 and replica(v, 4).version == 2
        assert (await run_started(cloud, f"{name_of(h)}-4")).command == "fixed"


# ---- autoscaling -------------------------------------------------------------------------


async def scale_to_three(h: WorkflowHandle, cloud: ServeCloud) -> None:
    """From 1 replica to 3 under ~5 QPS (2 per replica), after the upscale delay."""
    await until(h, lambda v: ready_ids(v) == [1], "1 READY")
    cloud.skip_report_seconds = 10
    await cloud.set_rate(5)
    t0 = await cloud.now()
    await skip_until(h, cloud, t0 + timedelta(seconds=55))
    v = await until(h, lambda v: True, "a look")
    assert v.qps > 2 and v.target_replicas == 1 and len(alive(v)) == 1, v
    await skip_until(h, cloud, t0 + timedelta(seconds=80))
    v = await until(h, lambda v: ready_ids(v) == [1, 2, 3], "3 replicas READY")
    assert v.target_replicas == 3 and v.qps > 4


async def test_the_autoscaler_scales_up_only_after_the_upscale_delay(env, cloud):
    async with worker(env, cloud):
        h = await start(env, spec(policy=AUTOSCALE))
        await scale_to_three(h, cloud)
        assert len(cloud.provisioned) == 3
        assert {c.report_seconds for c in cloud.serve_calls()} == {5}  # autoscaling


async def test_the_autoscaler_scales_down_only_after_the_downscale_delay(env, cloud):
    async with worker(env, cloud):
        h = await start(env, spec(policy=AUTOSCALE))
        name = name_of(h)
        await scale_to_three(h, cloud)
        await cloud.set_rate(0)
        t1 = await cloud.now()
        await skip_until(h, cloud, t1 + timedelta(seconds=100))
        v = await until(h, lambda v: True, "a look")
        assert v.target_replicas == 3 and ready_ids(v) == [1, 2, 3]
        # The load is gone from the QPS window within 60 s; 120 s later the target drops.
        await skip_until(h, cloud, t1 + timedelta(seconds=200))
        v = await until(h, lambda v: [r.id for r in alive(v)] == [1], "down to 1 replica")
        assert v.target_replicas == 1
        await until(h, lambda v: [r.id for r in v.replicas] == [1], "2 and 3 gone")
        assert sorted(cloud.terminated) == [f"{name}-2", f"{name}-3"]  # the newest went
        assert cloud.live == {f"{name}-1"}


# ---- updates -----------------------------------------------------------------------------


async def test_a_rolling_update_drains_old_replicas_only_as_new_ones_get_ready(env, cloud):
    async with worker(env, cloud):
        h = await start(env)
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "v1 READY")
        cloud.ready.update({1: True, 2: True})
        cloud.ready_default = False  # the new version's replicas answer when told
        mark = len(cloud.serve_calls())
        assert (await update(h, cloud, spec(run="serve v2"))).version == 2
        for rid in (3, 4):
            await run_started(cloud, f"{name}-{rid}")
        v = await until(h, lambda v: [status(v, i) for i in (3, 4)] == [R.STARTING] * 2, "v2 up")
        assert ready_ids(v) == [1, 2] and v.version == 2  # nothing drained yet

        cloud.set_ready(3, True)
        v = await until(h, lambda v: status(v, 3) is R.READY, "3 READY")
        assert status(v, 1) is R.SHUTTING_DOWN and status(v, 2) is R.READY
        await skip(h, cloud, 5)  # the drain
        await until(h, lambda v: status(v, 1) is None, "1 gone")  # drained: not kept
        assert f"{name}-1" in cloud.terminated
        assert ready_ids(await view(h)) == [2, 3]

        cloud.set_ready(4, True)
        v = await until(h, lambda v: status(v, 4) is R.READY, "4 READY")
        assert status(v, 2) is R.SHUTTING_DOWN
        await skip(h, cloud, 5)
        v = await until(h, lambda v: len(cloud.terminated) == 2, "2 gone")
        assert [(r.id, r.version) for r in alive(v)] == [(3, 2), (4, 2)]
        assert sorted(cloud.terminated) == [f"{name}-1", f"{name}-2"]
        assert (await run_started(cloud, f"{name}-4")).command == "serve v2"
        # The load balancer had two READY replicas at every moment of the update.
        assert all(sum(ready for _, ready in t) >= 2 for t in targets(cloud, mark))


async def test_a_blue_green_update_drains_old_replicas_once_all_new_ones_are_ready(env, cloud):
    async with worker(env, cloud):
        h = await start(env)
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "v1 READY")
        cloud.ready.update({1: True, 2: True})
        cloud.ready_default = False  # the new version's replicas answer when told
        mark = len(cloud.serve_calls())
        assert (await update(h, cloud, spec(run="serve v2"), "blue_green")).version == 2
        for rid in (3, 4):
            await run_started(cloud, f"{name}-{rid}")
        cloud.set_ready(3, True)
        v = await until(h, lambda v: status(v, 3) is R.READY, "3 READY")
        assert ready_ids(v) == [1, 2, 3]  # the old version serves on, whole
        cloud.set_ready(4, True)
        v = await until(h, lambda v: status(v, 4) is R.READY, "4 READY")
        assert [status(v, 1), status(v, 2)] == [R.SHUTTING_DOWN] * 2
        await skip(h, cloud, 5)
        v = await until(h, lambda v: len(cloud.terminated) == 2, "v1 gone")
        assert [(r.id, r.version) for r in alive(v)] == [(3, 2), (4, 2)]
        rotations = targets(cloud, mark)
        assert [(1, True), (2, True), (3, True), (4, False)] in rotations
        assert all(sum(ready for _, ready in t) >= 2 for t in rotations)


async def test_a_blue_green_update_keeps_an_old_replica_failing_a_probe(env, cloud):
    async with worker(env, cloud):
        h = await start(env, spec(probe=ProbeSpec(failure_timeout_seconds=300)))
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "v1 READY")
        cloud.ready.update({1: True, 2: True})
        cloud.ready_default = False
        assert (await update(h, cloud, spec(run="serve v2"), "blue_green")).version == 2
        for rid in (3, 4):
            await run_started(cloud, f"{name}-{rid}")
        cloud.set_ready(1, False)
        v = await until(h, lambda v: status(v, 1) is not R.READY, "1 out of the rotation")
        assert status(v, 1) is R.NOT_READY  # not drained: v2 is not READY yet
        cloud.set_ready(1, True)
        v = await until(h, lambda v: ready_ids(v) == [1, 2], "1 back")
        assert not cloud.terminated


# ---- down --------------------------------------------------------------------------------


async def test_down_releases_every_replica_and_the_load_balancer(env, cloud):
    async with worker(env, cloud):
        h = await start(env)
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "both READY")
        cloud.touch()
        v = await h.execute_update(ServiceUpdate.DOWN, DownServiceInput(), result_type=ServiceView)
        assert v.status is S.DOWN and v.endpoint is None
        assert sorted(cloud.terminated) == [f"{name}-1", f"{name}-2"] and not cloud.live
        assert cloud.lb_removed == [name]
        assert v.replicas == []  # released, not failed: gone
        assert ServiceView.model_validate(await h.result()).status is S.DOWN
        assert await attribute(h, search.SA_STATUS, "DOWN")


async def test_cancelling_the_service_releases_everything(env, cloud):
    async with worker(env, cloud):
        h = await start(env)
        name = name_of(h)
        await until(h, lambda v: ready_ids(v) == [1, 2], "both READY")
        cloud.touch()
        await h.cancel()
        with pytest.raises(WorkflowFailureError):
            await h.result()
        assert sorted(cloud.terminated) == [f"{name}-1", f"{name}-2"] and not cloud.live
        assert cloud.lb_removed == [name]


async def down_during_launch(env, cloud: ServeCloud) -> str:
    cloud.block_launch.clear()
    async with worker(env, cloud):
        h = await start(env)
        while cloud.calls["provision"] < 2:
            await asyncio.sleep(0.02)
        down = asyncio.ensure_future(
            h.execute_update(ServiceUpdate.DOWN, DownServiceInput(), result_type=ServiceView)
        )
        await until(h, lambda v: v.status is S.SHUTTING_DOWN, "shutting down")
        cloud.block_launch.set()  # the launches finish with the down waiting for them
        v = await asyncio.wait_for(down, 30)
        assert v.status is S.DOWN
        return name_of(h)


async def test_down_during_the_launches_leaks_nothing(env, cloud):
    name = await down_during_launch(env, cloud)
    assert sorted(cloud.terminated) == [f"{name}-1", f"{name}-2"] and not cloud.live
    assert cloud.lb_removed == [name]


async def test_down_during_the_launches_starts_no_server(env, cloud):
    await down_during_launch(env, cloud)
    assert cloud.started(Phase.RUN) == []


# ---- bad input ---------------------------------------------------------------------------


def _bad_name() -> tuple[ServiceInput, str]:
    return ServiceInput(name="Not_A_Name!", spec=spec()), "service-Not_A_Name!"


def _other_id() -> tuple[ServiceInput, str]:
    return ServiceInput(name="web", spec=spec()), f"service-web-{uuid.uuid4().hex[:6]}"


def _port_0() -> tuple[ServiceInput, str]:
    name = f"s{uuid.uuid4().hex[:6]}"
    return ServiceInput(name=name, spec=spec().model_copy(update={"port": 0})), f"service-{name}"


def _carried() -> tuple[ServiceInput, str]:
    name = f"s{uuid.uuid4().hex[:6]}"
    state = ServiceState(view=ServiceView(name=name, status=S.READY))
    return ServiceInput(name=name, spec=spec(), carried=state), f"service-{name}"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_bad_name, "name:"),
        (_other_id, "workflow id"),
        (_port_0, "spec.port:"),
        (_carried, "carried:"),
    ],
)
async def test_a_bad_input_fails_the_service_at_once_having_made_nothing(env, cloud, make, problem):
    inp, wid = make()
    async with worker(env, cloud):
        h = await env.client.start_workflow(ServiceWorkflow.run, inp, id=wid, task_queue=QUEUE)
        with pytest.raises(WorkflowFailureError) as e:
            await h.result()
    cause = e.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == search.INVALID_INPUT and cause.non_retryable
    assert problem in cause.message
    assert sum(cloud.calls.values()) == 0 and cloud.serve_inputs == []


# ---- continue-as-new ------------------------------------------------------------------


async def test_the_service_continues_as_new_carrying_its_replicas(env, cloud):
    async with worker(env, cloud):
        h = await start(env, continue_after_events=20)
        name = name_of(h)
        first_run = (await h.describe()).run_id
        latest = env.client.get_workflow_handle(h.id)
        for _ in range(400):
            if (await latest.describe()).run_id != first_run:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the service never continued as new")
        v = await until(latest, lambda v: ready_ids(v) == [1, 2], "both READY")
        assert v.endpoint == f"http://{LB_HOST}:{LB_PORT}" and v.status is S.READY
        assert any("replica 1: launching" in e for e in v.events)  # carried along
        # The new run probes the replicas the old one launched.
        cloud.set_ready(2, False)
        v = await until(latest, lambda v: status(v, 2) is R.NOT_READY, "2 NOT_READY")
        assert [r.id for r in alive(v)] == [1, 2]
        assert [cloud.provisions(f"{name}-{i}") for i in (1, 2)] == [1, 1]
        assert len(cloud.provisioned) == 2 and not cloud.terminated
        assert len(cloud.started(Phase.RUN)) == 2
