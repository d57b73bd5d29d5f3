"""The managed-job workflow's decisions on the time-skipping test server, with fake
activities under the real names. The test plays the shared watcher: it signals what a
node would show (a phase ended, a node preempted)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from skyloom.activities.models import Phase, PhaseInput
from skyloom.workflows.job_ids import JobIdsWorkflow
from skyloom.workflows.managed_job import ManagedJobWorkflow
from skyloom.workflows.models import (
    CANCEL_SIGNAL,
    OBSERVE_SIGNAL,
    Candidate,
    JobSpec,
    ManagedJobInput,
    ManagedJobStatus,
    ManagedJobView,
    ManagedTask,
)
from skyloom.workflows.recovery import RecoveryPolicy
from temporalio.worker import Worker

from tests.workflows.fakes import FakeCloud, ended, preempted

QUEUE = "test-managed"
S = ManagedJobStatus


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


def _worker(env, cloud):
    cloud.client = env.client
    return Worker(
        env.client,
        task_queue=QUEUE,
        workflows=[ManagedJobWorkflow, JobIdsWorkflow],
        activities=cloud.all(),
    )


def task(setup: str | None = None, run: str = "train", nodes: int = 1, infras=("local",)):
    return ManagedTask(
        spec=JobSpec(name="t", setup=setup, run=run, num_nodes=nodes),
        candidates=[Candidate(infra=i) for i in infras],
    )


async def _start(env, *tasks: ManagedTask, recovery: RecoveryPolicy | None = None):
    job_id = int(uuid.uuid4().int % 100000)
    return await env.client.start_workflow(
        ManagedJobWorkflow.run,
        ManagedJobInput(
            job_id=job_id,
            name="j",
            tasks=list(tasks) or [task()],
            recovery=recovery or RecoveryPolicy(),
            retry_launch_seconds=30,
        ),
        id=f"job-{job_id}",
        task_queue=QUEUE,
    )


async def view(h) -> ManagedJobView:
    return await h.query("describe", result_type=ManagedJobView)


async def until(h, pred, what: str) -> ManagedJobView:
    for _ in range(500):
        v = await view(h)
        if pred(v):
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}; last {v}")


async def until_started(h, cloud: FakeCloud, phase: Phase, n: int) -> PhaseInput:
    for _ in range(500):
        got = cloud.started(phase)
        if len(got) >= n:
            return got[n - 1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{phase} never started {n} times; {await view(h)}")


async def finish(h) -> ManagedJobView:
    return ManagedJobView.model_validate(await h.result())


async def test_job_runs_and_its_cluster_is_torn_down(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, task(setup="pip install"))
        s = await until_started(h, cloud, Phase.SETUP, 1)
        assert (await view(h)).status is S.STARTING
        await h.signal(OBSERVE_SIGNAL, [ended(s)])
        r = await until_started(h, cloud, Phase.RUN, 1)
        assert (await view(h)).status is S.RUNNING
        await h.signal(OBSERVE_SIGNAL, [ended(r)])
        v = await finish(h)
        assert v.status is S.SUCCEEDED and v.recovery_count == 0
        assert r.envs["SKYPILOT_MANAGED_JOB_ID"] == str(v.id)
        assert r.notify == h.id  # the watcher will know whom to tell
        assert cloud.live == set()


async def test_preempted_twice_recovers_with_the_same_task_id(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env)
        runs = []
        for n in (1, 2):
            runs.append(await until_started(h, cloud, Phase.RUN, n))
            await h.signal(OBSERVE_SIGNAL, [preempted(runs[-1])])
            await until(h, lambda v, n=n: v.recovery_count == n, f"recovery {n}")
        runs.append(await until_started(h, cloud, Phase.RUN, 3))
        await h.signal(OBSERVE_SIGNAL, [ended(runs[-1])])
        v = await finish(h)
        assert v.status is S.SUCCEEDED and v.recovery_count == 2 and v.restarts == 0
        assert len({r.task_id for r in runs}) == 1
        assert len({r.handle.cluster for r in runs}) == 3  # a fresh cluster each time
        assert any("RECOVERING" in e for e in v.events)
        assert cloud.live == set() and cloud.calls["terminate"] == 3


async def test_preemption_during_setup_reruns_setup_on_the_new_cluster(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, task(setup="s"))
        s1 = await until_started(h, cloud, Phase.SETUP, 1)
        await h.signal(OBSERVE_SIGNAL, [preempted(s1)])
        s2 = await until_started(h, cloud, Phase.SETUP, 2)
        assert s2.handle.cluster != s1.handle.cluster
        await h.signal(OBSERVE_SIGNAL, [ended(s2)])
        r = await until_started(h, cloud, Phase.RUN, 1)
        await h.signal(OBSERVE_SIGNAL, [ended(r)])
        v = await finish(h)
        assert (v.status, v.recovery_count) == (S.SUCCEEDED, 1)


async def test_a_killed_job_on_healthy_nodes_is_a_failure_not_a_preemption(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env)
        r = await until_started(h, cloud, Phase.RUN, 1)
        await h.signal(OBSERVE_SIGNAL, [ended(r, None)])
        v = await finish(h)
        assert v.status is S.FAILED and v.recovery_count == 0
        assert cloud.calls["observe"] >= 1  # it asked the provider before deciding


async def test_killed_job_on_nodes_the_provider_says_are_preempted_recovers(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env)
        r = await until_started(h, cloud, Phase.RUN, 1)
        cloud.preempted.add(r.handle.cluster)
        await h.signal(OBSERVE_SIGNAL, [ended(r, None)])
        r2 = await until_started(h, cloud, Phase.RUN, 2)
        await h.signal(OBSERVE_SIGNAL, [ended(r2)])
        assert (await finish(h)).recovery_count == 1


async def test_user_failure_restarts_as_configured_then_fails(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, recovery=RecoveryPolicy(max_restarts_on_errors=1))
        r1 = await until_started(h, cloud, Phase.RUN, 1)
        await h.signal(OBSERVE_SIGNAL, [ended(r1, 3)])
        r2 = await until_started(h, cloud, Phase.RUN, 2)
        await h.signal(OBSERVE_SIGNAL, [ended(r2, 3)])
        v = await finish(h)
        assert (v.status, v.restarts) == (S.FAILED, 1)
        assert "exit code 3" in (v.reason or "")
        assert cloud.live == set()


async def test_recover_on_exit_codes_is_not_counted(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, recovery=RecoveryPolicy(recover_on_exit_codes=[29]))
        for n in (1, 2):
            r = await until_started(h, cloud, Phase.RUN, n)
            await h.signal(OBSERVE_SIGNAL, [ended(r, 29)])
        r = await until_started(h, cloud, Phase.RUN, 3)
        await h.signal(OBSERVE_SIGNAL, [ended(r)])
        v = await finish(h)
        assert (v.status, v.recovery_count, v.restarts) == (S.SUCCEEDED, 2, 0)


async def test_setup_failure_is_failed_setup(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, task(setup="s"), recovery=RecoveryPolicy(max_restarts_on_errors=3))
        s = await until_started(h, cloud, Phase.SETUP, 1)
        await h.signal(OBSERVE_SIGNAL, [ended(s, 1)])
        assert (await finish(h)).status is S.FAILED_SETUP
        assert cloud.started(Phase.RUN) == []


async def test_two_node_job_waits_for_both_ranks(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, task(nodes=2))
        r = await until_started(h, cloud, Phase.RUN, 1)
        await h.signal(OBSERVE_SIGNAL, [ended(r, 0, rank=1)])
        await asyncio.sleep(0.3)
        assert (await view(h)).status is S.RUNNING
        await h.signal(OBSERVE_SIGNAL, [ended(r, 0, rank=0)])
        assert (await finish(h)).status is S.SUCCEEDED


async def test_failover_to_the_next_candidate_then_no_resource(env, cloud):
    cloud.no_capacity = {"aws/us-east-1"}
    async with _worker(env, cloud):
        h = await _start(env, task(infras=("aws/us-east-1", "local")))
        r = await until_started(h, cloud, Phase.RUN, 1)
        assert r.handle.infra == "local"
        await h.signal(OBSERVE_SIGNAL, [ended(r)])
        assert (await finish(h)).status is S.SUCCEEDED
    cloud.no_capacity = {"local"}
    async with _worker(env, cloud):
        h = await _start(env)
        v = await finish(h)
        assert v.status is S.FAILED_NO_RESOURCE and "local is full" in (v.reason or "")
        assert cloud.live == set()


async def test_invalid_infra_is_failed_prechecks(env, cloud):
    cloud.invalid = {"nowhere"}
    async with _worker(env, cloud):
        h = await _start(env, task(infras=("nowhere",)))
        assert (await finish(h)).status is S.FAILED_PRECHECKS


async def test_cancel_while_running(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env)
        await until_started(h, cloud, Phase.RUN, 1)
        await h.signal(CANCEL_SIGNAL)
        v = await finish(h)
        assert v.status is S.CANCELLED
        assert cloud.live == set()
        assert any("CANCELLING" in e for e in v.events)


async def test_cancel_during_recovery_leaks_nothing(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env)
        r = await until_started(h, cloud, Phase.RUN, 1)
        cloud.no_capacity = {"local"}  # recovery cannot find capacity: it waits and retries
        await h.signal(OBSERVE_SIGNAL, [preempted(r)])
        await until(h, lambda v: v.status is S.RECOVERING, "recovering")
        await env.sleep(65)  # two more launch tries
        await h.signal(CANCEL_SIGNAL)
        v = await finish(h)
        assert v.status is S.CANCELLED
        assert cloud.calls["provision"] >= 3
        assert cloud.live == set()


async def test_cancel_mid_launch_waits_for_the_launch_and_terminates_it(env, cloud):
    cloud.block_launch.clear()
    async with _worker(env, cloud):
        h = await _start(env)
        await until(h, lambda v: v.status is S.STARTING, "starting")
        while cloud.calls["provision"] == 0:
            await asyncio.sleep(0.02)
        await h.signal(CANCEL_SIGNAL)
        await asyncio.sleep(0.3)
        cloud.block_launch.set()  # the launch completes after the cancel
        v = await finish(h)
        assert v.status is S.CANCELLED
        assert cloud.launched and cloud.live == set()


async def test_cancel_while_nodes_boot_ends_the_launch_at_once(env, cloud):
    cloud.booting = True  # the VMs never finish booting: the launch would wait 20 minutes
    async with _worker(env, cloud):
        h = await _start(env)
        while cloud.calls["describe"] == 0:
            await asyncio.sleep(0.02)
        await h.signal(CANCEL_SIGNAL)
        v = await finish(h)
        assert v.status is S.CANCELLED
        # It gave up at the cancel, not after 20 minutes of looking (hundreds of looks).
        assert cloud.calls["describe"] <= 3
        assert cloud.launched and cloud.live == set()


async def test_safety_net_looks_when_no_watcher_reports(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env)
        r = await until_started(h, cloud, Phase.RUN, 1)
        cloud.observed.append(ended(r))  # the node knows; nobody signals
        v = await finish(h)  # awaiting the result lets the test server skip time
        assert v.status is S.SUCCEEDED and cloud.calls["observe"] >= 1


async def test_pipeline_runs_tasks_in_order(env, cloud):
    async with _worker(env, cloud):
        h = await _start(env, task(run="a"), task(run="b"))
        a = await until_started(h, cloud, Phase.RUN, 1)
        await h.signal(OBSERVE_SIGNAL, [ended(a)])
        b = await until_started(h, cloud, Phase.RUN, 2)
        assert (a.command, b.command) == ("a", "b") and a.task_id != b.task_id
        await h.signal(OBSERVE_SIGNAL, [ended(b)])
        v = await finish(h)
        assert v.status is S.SUCCEEDED and v.task_index == 1


async def test_job_ids_are_handed_out_once_each(env, cloud):
    async with _worker(env, cloud):
        h = await env.client.start_workflow(JobIdsWorkflow.run, 1, id="ids", task_queue=QUEUE)
        got = await asyncio.gather(
            *(h.execute_update("allocate", result_type=int) for _ in range(10))
        )
        assert sorted(got) == list(range(1, 11))
