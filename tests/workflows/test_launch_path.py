"""The one launch path, on the time-skipping test server with fake activities: placements
tried in order with failover and cleanup, every attempt recorded, inputs checked by the
workflows themselves, search attributes set by the workflows, capabilities checked before
use, phases decided from the watcher's news (a finished phase is never undone), and
continue-as-new carrying a managed job's state mid-run."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from skyloom.activities.errors import ErrorKind
from skyloom.activities.models import (
    OBSERVE_SIGNAL,
    Candidate,
    Capability,
    Observation,
    Phase,
    PhaseState,
)
from skyloom.workflows import search
from skyloom.workflows.cluster import ClusterWorkflow
from skyloom.workflows.managed_job import ManagedJobWorkflow
from skyloom.workflows.models import (
    AutostopInput,
    ClusterDescription,
    ClusterInput,
    ClusterResult,
    ClusterStatus,
    DownInput,
    JobSpec,
    JobStatus,
    ManagedJobInput,
    ManagedJobStatus,
    ManagedJobView,
    ManagedTask,
    StopInput,
    SubmitJobInput,
    SubmitJobResult,
)
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from tests.workflows.fakes import FakeCloud, ended, preempted

QUEUE = "test-launch"


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


def worker(env, cloud: FakeCloud) -> Worker:
    cloud.client = env.client
    return Worker(
        env.client,
        task_queue=QUEUE,
        workflows=[ClusterWorkflow, ManagedJobWorkflow],
        activities=cloud.all(),
    )


async def start_cluster(env, *infras: str, ordered: bool = False, **more):
    name = f"c{uuid.uuid4().hex[:6]}"
    inp = ClusterInput(
        name=name,
        infra=infras[0] if infras else "local",
        candidates=[Candidate(infra=i) for i in infras],
        ordered=ordered,
        **more,
    )
    return await env.client.start_workflow(
        ClusterWorkflow.run, inp, id=f"cluster-{name}", task_queue=QUEUE
    )


async def describe(h) -> ClusterDescription:
    return await h.query("describe", result_type=ClusterDescription)


async def until(h, pred, what: str, query=describe):
    last = None
    for _ in range(500):
        last = await query(h)
        if pred(last):
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}; last: {last}")


async def submit(h, **spec) -> int:
    res = await h.execute_update(
        "submit_job", SubmitJobInput(spec=JobSpec(**spec)), result_type=SubmitJobResult
    )
    return res.job_id


def job(d: ClusterDescription, job_id: int):
    return next(j for j in d.jobs if j.id == job_id)


async def started(cloud: FakeCloud, job_id: int, phase: Phase):
    for _ in range(500):
        found = [p for p in cloud.phases if (p.job_id, p.phase) == (job_id, phase)]
        if found:
            return found[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} {phase} never started")


# ---- clusters ------------------------------------------------------------------------


async def test_a_full_placement_fails_over_to_the_next_and_is_cleaned_up(env, cloud):
    cloud.no_capacity = {"ssh/full"}
    async with worker(env, cloud):
        h = await start_cluster(env, "ssh/full", "ssh/free")
        d = await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        assert d.infra == "ssh/free" and d.handle is not None and d.handle.infra == "ssh/free"
        assert [(a.infra, a.kind) for a in d.launch_attempts] == [("ssh/full", "NoCapacity")]
        assert d.launch_attempts[0].region == "r1"  # where it failed, as data
        # The failed placement was terminated before the next was tried.
        assert cloud.calls["terminate"] == 1 and cloud.launched == [(d.name, "ssh/free")]
        info = await h.describe()
        assert info.typed_search_attributes.get(search.SA_INFRA) == "ssh/free"


async def test_ordered_tries_the_given_order(env, cloud):
    async with worker(env, cloud):
        h = await start_cluster(env, "ssh/b", "ssh/a", ordered=True)
        d = await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        assert d.infra == "ssh/b" and d.launch_attempts == []


async def test_no_capacity_anywhere_ends_the_cluster_with_the_table(env, cloud):
    cloud.no_capacity = {"ssh/full", "ssh/free"}
    async with worker(env, cloud):
        h = await start_cluster(env, "ssh/full", "ssh/free")
        job_id = await submit(h, run="x")
        result = ClusterResult.model_validate(await h.result())
        assert result.status is ClusterStatus.TERMINATED
        assert "ssh/full/r1: NoCapacity" in (result.reason or "")
        assert "ssh/free/r1: NoCapacity" in (result.reason or "")
        d = await describe(h)
        assert job(d, job_id).status is JobStatus.FAILED
        assert len(d.launch_attempts) == 2 and not cloud.live


async def test_a_candidate_the_plan_refuses_is_skipped_and_named(env, cloud):
    cloud.invalid = {"ssh/nope"}
    async with worker(env, cloud):
        h = await start_cluster(env, "ssh/nope", "local")
        d = await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        assert d.infra == "local"
        assert [(a.infra, a.kind) for a in d.launch_attempts] == [("ssh/nope", "InvalidSpec")]


@pytest.mark.parametrize(
    "name", ["../../../tmp/x", "Bad Name!", "-x", "x-", "9lives", "a" * 64, "a/b", ""]
)
async def test_a_bad_name_fails_the_workflow_at_once_and_creates_nothing(env, cloud, name):
    async with worker(env, cloud):
        h = await env.client.start_workflow(
            ClusterWorkflow.run,
            ClusterInput(name=name, infra="local"),
            id=f"cluster-bad-{uuid.uuid4().hex[:6]}",
            task_queue=QUEUE,
        )
        with pytest.raises(WorkflowFailureError) as e:
            await h.result()
        assert isinstance(e.value.cause, ApplicationError)
        assert e.value.cause.type == search.INVALID_INPUT and e.value.cause.non_retryable
        assert "name" in e.value.cause.message
        assert sum(cloud.calls.values()) == 0


async def test_a_cluster_whose_id_is_not_its_name_fails(env, cloud):
    async with worker(env, cloud):
        h = await env.client.start_workflow(
            ClusterWorkflow.run,
            ClusterInput(name="good"),
            id="cluster-good with a space",
            task_queue=QUEUE,
        )
        with pytest.raises(WorkflowFailureError) as e:
            await h.result()
        assert "expected 'cluster-good'" in str(e.value.cause)
        assert sum(cloud.calls.values()) == 0


@pytest.mark.parametrize("num_nodes", [0, -1, 100000])
async def test_an_absurd_node_count_fails_the_workflow(env, cloud, num_nodes):
    async with worker(env, cloud):
        name = f"n{uuid.uuid4().hex[:6]}"
        h = await env.client.start_workflow(
            ClusterWorkflow.run,
            ClusterInput(name=name, num_nodes=num_nodes),
            id=f"cluster-{name}",
            task_queue=QUEUE,
        )
        with pytest.raises(WorkflowFailureError):
            await h.result()
        assert sum(cloud.calls.values()) == 0


async def test_a_cluster_started_without_search_attributes_indexes_itself(env, cloud):
    async with worker(env, cloud):
        # What a foreign client sends: no search attributes, no user, the minimal input.
        h = await env.client.start_workflow(
            "ClusterWorkflow",
            {"name": "foreign", "infra": "local", "num_nodes": 1},
            id="cluster-foreign",
            task_queue=QUEUE,
        )
        await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        sa = (await h.describe()).typed_search_attributes
        assert sa.get(search.SA_KIND) == "cluster"
        assert sa.get(search.SA_NAME) == "foreign"
        assert sa.get(search.SA_INFRA) == "local"
        assert sa.get(search.SA_STATUS) == "UP"
        assert sa.get(search.SA_USER) == "unknown"


async def test_stop_and_autostop_are_refused_where_the_infra_cannot_stop(env, cloud):
    cloud.capabilities = [Capability.MULTI_NODE, Capability.WATCH]
    async with worker(env, cloud):
        h = await start_cluster(env, "k8s/ctx")
        await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update("stop", StopInput(), result_type=ClusterDescription)
        assert "k8s/ctx infra has no stop" in str(e.value.cause)
        with pytest.raises(WorkflowUpdateFailedError):
            await h.execute_update("set_autostop", AutostopInput(idle_minutes=5))
        # With --down it is fine.
        await h.execute_update("set_autostop", AutostopInput(idle_minutes=5, down=True))
        assert cloud.calls["stop"] == 0


async def test_a_node_cut_off_fails_the_job_with_the_reason(env, cloud):
    async with worker(env, cloud):
        h = await start_cluster(env, "ssh/lab", num_nodes=2)
        job_id = await submit(h, run="long", num_nodes=2)
        p = await started(cloud, job_id, Phase.RUN)
        cut = Observation(
            cluster=p.handle.cluster,
            rank=1,
            state=PhaseState.UNREACHABLE,
            job_id=job_id,
            phase=Phase.RUN,
            reason="node 1 (10.0.0.2) unreachable for more than 8s: timed out",
        )
        await h.signal(OBSERVE_SIGNAL, [cut])
        d = await until(h, lambda d: job(d, job_id).status.terminal, "job ends")
        j = job(d, job_id)
        assert (j.status, j.failed_rank) == (JobStatus.FAILED, 1)
        assert "unreachable" in (j.reason or "") and "10.0.0.2" in (j.reason or "")
        assert cloud.killed == [job_id]  # rank 0 still ran: it was killed


async def test_a_finished_run_is_not_undone_by_a_preemption_seen_with_it(env, cloud):
    async with worker(env, cloud):
        h = await start_cluster(env, "local", num_nodes=2)
        job_id = await submit(h, run="x", num_nodes=2)
        p = await started(cloud, job_id, Phase.RUN)
        await h.signal(OBSERVE_SIGNAL, [ended(p, 0, 0), preempted(p, 0), ended(p, 0, 1)])
        d = await until(h, lambda d: job(d, job_id).status.terminal, "job ends")
        assert job(d, job_id).status is JobStatus.SUCCEEDED
        assert cloud.killed == []


async def test_the_cluster_continues_as_new_between_jobs_keeping_its_state(env, cloud):
    async with worker(env, cloud):
        h = await start_cluster(env, "local", continue_after_events=40)
        first_run = (await h.describe()).run_id
        for i in range(1, 6):
            cloud.release(i, "run", [0])
            job_id = await submit(h, run=f"job {i}")
            await until(h, lambda d, j=job_id: job(d, j).status.terminal, f"job {i}")
        latest = env.client.get_workflow_handle(h.id)
        assert (await latest.describe()).run_id != first_run
        d = await describe(latest)
        assert [j.status for j in d.jobs] == [JobStatus.SUCCEEDED] * 5
        assert d.status is ClusterStatus.UP and cloud.calls["provision"] == 1


# ---- managed jobs ----------------------------------------------------------------------


async def start_job(env, *infras: str, **more):
    job_id = int(uuid.uuid4().int % 100000) + 1
    inp = ManagedJobInput(
        job_id=job_id,
        name="j",
        tasks=[
            ManagedTask(spec=JobSpec(run="train"), candidates=[Candidate(infra=i) for i in infras])
        ],
        **more,
    )
    return await env.client.start_workflow(
        ManagedJobWorkflow.run, inp, id=f"job-{job_id}", task_queue=QUEUE
    )


async def view(h) -> ManagedJobView:
    return await h.query("describe", result_type=ManagedJobView)


@pytest.mark.parametrize("together", [True, False])
async def test_a_managed_run_that_exited_0_is_never_run_again(env, cloud, together):
    async with worker(env, cloud):
        h = await start_job(env, "local")
        p = await started(cloud, 1, Phase.RUN)
        if together:
            await h.signal(OBSERVE_SIGNAL, [ended(p), preempted(p)])
        else:
            await h.signal(OBSERVE_SIGNAL, [ended(p)])
            await h.signal(OBSERVE_SIGNAL, [preempted(p)])
        v = ManagedJobView.model_validate(await h.result())
        assert (v.status, v.recovery_count) == (ManagedJobStatus.SUCCEEDED, 0)
        assert len(cloud.started(Phase.RUN)) == 1 and len(cloud.launched) == 1


async def test_no_resource_anywhere_names_every_placement_tried(env, cloud):
    cloud.no_capacity = {"ssh/a", "ssh/b"}
    async with worker(env, cloud):
        h = await start_job(env, "ssh/a", "ssh/b")
        v = ManagedJobView.model_validate(await h.result())
        assert v.status is ManagedJobStatus.FAILED_NO_RESOURCE
        assert "ssh/a/r1: NoCapacity" in (v.reason or "") and "ssh/b/r1: NoCapacity" in (
            v.reason or ""
        )
        assert [a.infra for a in v.launch_attempts] == ["ssh/a", "ssh/b"]
        assert not cloud.live


async def test_a_managed_job_with_a_bad_name_fails_at_once(env, cloud):
    async with worker(env, cloud):
        job_id = int(uuid.uuid4().int % 100000) + 1
        h = await env.client.start_workflow(
            ManagedJobWorkflow.run,
            ManagedJobInput(
                job_id=job_id,
                name="../x",
                tasks=[ManagedTask(spec=JobSpec(run="x"), candidates=[Candidate(infra="local")])],
            ),
            id=f"job-{job_id}",
            task_queue=QUEUE,
        )
        with pytest.raises(WorkflowFailureError):
            await h.result()
        assert sum(cloud.calls.values()) == 0


async def test_a_managed_job_continues_as_new_mid_run_and_picks_its_run_up(env, cloud):
    async with worker(env, cloud):
        h = await start_job(env, "local", continue_after_events=10)
        first_run = (await h.describe()).run_id
        p = await started(cloud, 1, Phase.RUN)
        latest = env.client.get_workflow_handle(h.id)
        for _ in range(500):
            if (await latest.describe()).run_id != first_run:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the job never continued as new")
        v = await view(latest)
        assert v.status is ManagedJobStatus.RUNNING and v.cluster == p.handle.cluster
        # The running phase is picked up, on the same cluster: nothing launched again.
        await latest.signal(OBSERVE_SIGNAL, [ended(p)])
        v = ManagedJobView.model_validate(await latest.result())
        assert v.status is ManagedJobStatus.SUCCEEDED
        assert len(cloud.launched) == 1 and not cloud.live
        assert {q.handle.cluster for q in cloud.started(Phase.RUN)} == {p.handle.cluster}
        assert any("launched" in e for e in v.events)  # the carried events


async def test_errors_are_data_kind_and_where_reach_the_workflow(env, cloud):
    cloud.launch_error = ErrorKind.QUOTA
    async with worker(env, cloud):
        h = await start_cluster(env, "aws")
        result = ClusterResult.model_validate(await h.result())
        assert "aws: Quota" in (result.reason or "")


async def test_a_placement_whose_cleanup_fails_is_said_and_the_next_is_tried(env, cloud):
    cloud.no_capacity = {"ssh/a"}
    cloud.terminate_error = ErrorKind.UNREACHABLE
    async with worker(env, cloud):
        h = await start_cluster(env, "ssh/a", "ssh/b")
        d = await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        assert d.infra == "ssh/b"
        assert "cleanup failed, nodes may be left: host h1 gone" in d.launch_attempts[0].message


async def test_down_sent_during_the_launch_ends_the_cluster_and_its_job(env, cloud):
    cloud.block_launch.clear()
    async with worker(env, cloud):
        h = await start_cluster(env, "local")
        job_id = await submit(h, run="x")
        while cloud.calls["provision"] == 0:
            await asyncio.sleep(0.02)
        down = asyncio.ensure_future(
            h.execute_update("down", DownInput(), result_type=ClusterDescription)
        )
        await asyncio.sleep(0.3)
        cloud.block_launch.set()  # the launch completes with the down waiting for it
        d = await asyncio.wait_for(down, 30)
        assert d.status is ClusterStatus.TERMINATED
        assert job(d, job_id).status is JobStatus.CANCELLED
        assert not cloud.live and cloud.started() == []


async def test_down_sent_while_nodes_boot_ends_the_launch_at_once(env, cloud):
    cloud.booting = True  # the VMs never finish booting: the launch would wait 20 minutes
    async with worker(env, cloud):
        h = await start_cluster(env, "local")
        job_id = await submit(h, run="x")
        while cloud.calls["describe"] == 0:
            await asyncio.sleep(0.02)
        d = await h.execute_update("down", DownInput(), result_type=ClusterDescription)
        assert d.status is ClusterStatus.TERMINATED and "down" in (d.reason or "")
        assert job(d, job_id).status is JobStatus.CANCELLED
        # It gave up at the down, not after 20 minutes of looking (hundreds of looks).
        assert cloud.calls["describe"] <= 3
        assert not cloud.live


async def test_an_ending_of_an_older_namesake_is_not_this_clusters(env, cloud):
    async with worker(env, cloud):
        h = await start_cluster(env, "local")
        job_id = await submit(h, run="x")
        p = await started(cloud, job_id, Phase.RUN)
        await h.signal(OBSERVE_SIGNAL, [ended(p, 0, owner=f"{p.handle.cluster}.0ld0ld0l")])
        await asyncio.sleep(0.3)
        assert job(await describe(h), job_id).status is JobStatus.RUNNING
        await h.signal(OBSERVE_SIGNAL, [ended(p, 0)])
        d = await until(h, lambda d: job(d, job_id).status.terminal, "job ends")
        assert job(d, job_id).status is JobStatus.SUCCEEDED


async def test_autostop_due_while_a_stop_holds_the_lock_waits_for_it(env, cloud):
    async with worker(env, cloud):
        h = await start_cluster(env, "local")
        await until(h, lambda d: d.status is ClusterStatus.UP, "up")
        cloud.block_stop.clear()
        stop = asyncio.ensure_future(
            h.execute_update("stop", StopInput(), result_type=ClusterDescription)
        )
        while cloud.calls["stop"] == 0:
            await asyncio.sleep(0.02)
        # Autostop falls due while the stop holds the lifecycle lock: the workflow waits
        # for the stop to end, and a stopped cluster has nothing left to autostop.
        await h.execute_update("set_autostop", AutostopInput(idle_minutes=0))
        await asyncio.sleep(0.5)
        cloud.block_stop.set()
        d = await asyncio.wait_for(stop, 30)
        assert d.status is ClusterStatus.STOPPED and cloud.calls["stop"] == 1
        assert (await describe(h)).status is ClusterStatus.STOPPED


async def test_a_client_cannot_hand_a_fresh_cluster_carried_state(env, cloud):
    from skyloom.activities.models import ClusterHandle, NodeInfo
    from skyloom.workflows.models import ClusterState

    evil = ClusterHandle(
        cluster="c",
        infra="ssh/x",
        nodes=[NodeInfo(rank=0, node_id="x", ip="10.9.9.9", root="/", identity_file="/key")],
    )
    async with worker(env, cloud):
        h = await env.client.start_workflow(
            ClusterWorkflow.run,
            ClusterInput(name="c", carried=ClusterState(status=ClusterStatus.UP, handle=evil)),
            id="cluster-c",
            task_queue=QUEUE,
        )
        with pytest.raises(WorkflowFailureError) as e:
            await h.result()
        assert "carried" in str(e.value.cause) and sum(cloud.calls.values()) == 0


async def test_a_job_whose_cluster_cannot_be_released_still_ends_saying_so(env, cloud):
    cloud.terminate_error = ErrorKind.UNREACHABLE
    async with worker(env, cloud):
        h = await start_job(env, "ssh/lab")
        p = await started(cloud, 1, Phase.RUN)
        await h.signal(OBSERVE_SIGNAL, [ended(p)])
        v = ManagedJobView.model_validate(await h.result())
        assert v.status is ManagedJobStatus.SUCCEEDED
        assert "could not release" in (v.reason or "") and "ssh/lab" in (v.reason or "")
        assert cloud.calls["terminate"] >= 3  # tried again before giving up
