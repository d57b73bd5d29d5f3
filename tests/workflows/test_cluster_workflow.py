"""The cluster workflow's decisions, on the time-skipping test server with fake activities.

Fakes are registered under the real activity names, record every call, and let a test
decide how each phase ends, so no test waits on real time (autostop included).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from skyloom.activities.errors import ErrorKind
from skyloom.workflows import search
from skyloom.workflows.cluster import ClusterWorkflow
from skyloom.workflows.models import (
    AutostopConfig,
    AutostopInput,
    CancelJobsInput,
    CancelJobsResult,
    ClusterDescription,
    ClusterInput,
    ClusterResult,
    ClusterStatus,
    DownInput,
    JobSpec,
    JobStatus,
    StartInput,
    StopInput,
    SubmitJobInput,
    SubmitJobResult,
)
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflows.fakes import FakeCloud

QUEUE = "test-cluster"


@pytest.fixture
async def live_env(dev_server_path: str):
    """The real dev server, for tests that cancel an activity while it runs: the
    time-skipping server rejects such a cancel (ACTIVITY_UNKNOWN) and the workflow task
    then retries forever. These tests wait on no timer, so they need no time skipping."""
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=dev_server_path,
        search_attributes=list(search.ALL),
    ) as env:
        yield env


@pytest.fixture
def fake() -> FakeCloud:
    return FakeCloud()


async def _start(
    client: Client,
    *,
    num_nodes: int = 1,
    autostop: AutostopConfig | None = None,
    **more,
):
    name = f"c{uuid.uuid4().hex[:6]}"
    return await client.start_workflow(
        ClusterWorkflow.run,
        ClusterInput(name=name, num_nodes=num_nodes, autostop=autostop or AutostopConfig(), **more),
        id=f"cluster-{name}",
        task_queue=QUEUE,
    )


async def _submit(handle, **spec) -> int:
    res = await handle.execute_update(
        "submit_job", SubmitJobInput(spec=JobSpec(**spec)), result_type=SubmitJobResult
    )
    return res.job_id


async def _describe(handle) -> ClusterDescription:
    return await handle.query("describe", result_type=ClusterDescription)


async def _until(handle, pred, what: str) -> ClusterDescription:
    for _ in range(400):
        d = await _describe(handle)
        if pred(d):
            return d
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached: {what}; last: {d}")


def _job(d: ClusterDescription, job_id: int):
    return next(j for j in d.jobs if j.id == job_id)


def _worker(env, fake):
    fake.client = env.client
    return Worker(env.client, task_queue=QUEUE, workflows=[ClusterWorkflow], activities=fake.all())


def _started(fake: FakeCloud) -> list[tuple[int, str]]:
    return [(p.job_id, p.phase.value) for p in fake.phases]


async def test_job_runs_setup_then_run_and_succeeds(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client)
        fake.release(1, "setup", [0])
        fake.release(1, "run", [0])
        job = await _submit(h, setup="echo s", run="echo r")
        d = await _until(h, lambda d: _job(d, job).status.terminal, "job 1 ends")
        assert d.status is ClusterStatus.UP
        assert _job(d, job).status is JobStatus.SUCCEEDED
        assert _started(fake) == [(1, "setup"), (1, "run")]
        assert fake.calls["provision"] == 1


async def test_setup_failure_is_failed_setup_and_run_never_starts(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client, num_nodes=2)
        fake.release(1, "setup", [0, 7])
        job = await _submit(h, setup="false", run="echo never", num_nodes=2)
        d = await _until(h, lambda d: _job(d, job).status.terminal, "job ends")
        j = _job(d, job)
        assert (j.status, j.exit_code, j.failed_rank) == (JobStatus.FAILED_SETUP, 7, 1)
        assert (1, "run") not in _started(fake)


async def test_run_failure_reports_exit_code_and_rank(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client)
        fake.release(1, "run", [3])
        job = await _submit(h, run="exit 3")
        d = await _until(h, lambda d: _job(d, job).status.terminal, "job ends")
        assert (_job(d, job).status, _job(d, job).exit_code) == (JobStatus.FAILED, 3)


async def test_jobs_queue_fifo_one_at_a_time(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client)
        first = await _submit(h, run="a")
        second = await _submit(h, run="b")
        d = await _until(h, lambda d: _job(d, first).status is JobStatus.RUNNING, "first runs")
        assert _job(d, second).status is JobStatus.PENDING
        fake.release(first, "run", [0])
        fake.release(second, "run", [0])
        d = await _until(h, lambda d: _job(d, second).status.terminal, "second ends")
        assert [j.status for j in d.jobs] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
        assert _started(fake) == [(1, "run"), (2, "run")]


async def test_cancel_running_and_pending_jobs(live_env, fake):
    env = live_env
    async with _worker(env, fake):
        h = await _start(env.client)
        running = await _submit(h, run="sleep")
        pending = await _submit(h, run="later")
        await _until(h, lambda d: _job(d, running).status is JobStatus.RUNNING, "running")
        res = await h.execute_update(
            "cancel_jobs", CancelJobsInput(all=True), result_type=CancelJobsResult
        )
        assert sorted(res.cancelled) == [running, pending]
        d = await _describe(h)
        assert [j.status for j in d.jobs] == [JobStatus.CANCELLED, JobStatus.CANCELLED]
        assert fake.killed == [running]
        assert (pending, "run") not in _started(fake)


async def test_stop_rejects_jobs_until_start(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client)
        await _until(h, lambda d: d.status is ClusterStatus.UP, "up")
        d = await h.execute_update("stop", StopInput(), result_type=ClusterDescription)
        assert d.status is ClusterStatus.STOPPED
        with pytest.raises(WorkflowUpdateFailedError):
            await _submit(h, run="x")
        d = await h.execute_update("start", StartInput(), result_type=ClusterDescription)
        assert d.status is ClusterStatus.UP
        fake.release(1, "run", [0])
        job = await _submit(h, run="x")
        await _until(h, lambda d: _job(d, job).status is JobStatus.SUCCEEDED, "job after start")
        assert (fake.calls["stop"], fake.calls["start"]) == (1, 1)


async def test_autostop_stops_an_idle_cluster_on_a_timer(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client, autostop=AutostopConfig(idle_minutes=5))
        fake.release(1, "run", [0])
        await _submit(h, run="x")
        await _until(h, lambda d: d.jobs and d.jobs[0].status.terminal, "job ends")
        assert (await _describe(h)).status is ClusterStatus.UP
        await env.sleep(timedelta(minutes=4))
        assert (await _describe(h)).status is ClusterStatus.UP
        await env.sleep(timedelta(minutes=2))
        d = await _until(h, lambda d: d.status is ClusterStatus.STOPPED, "autostopped")
        assert "autostop" in (d.reason or "")
        assert fake.calls["terminate"] == 0


async def test_autostop_waits_for_running_jobs_and_then_goes_down(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client)
        job = await _submit(h, run="long")
        await _until(h, lambda d: _job(d, job).status is JobStatus.RUNNING, "running")
        await h.execute_update(
            "set_autostop", AutostopInput(idle_minutes=1, down=True), result_type=ClusterDescription
        )
        # (A busy cluster is never idle: tests/workflows/test_policies.py. Skipping time
        # here would also skip past the running watcher's heartbeat timeout.)
        assert (await _describe(h)).status is ClusterStatus.UP
        fake.release(job, "run", [0])
        await _until(h, lambda d: _job(d, job).status.terminal, "job ends")
        await env.sleep(timedelta(minutes=2))
        result = ClusterResult.model_validate(await h.result())
        assert result.status is ClusterStatus.TERMINATED
        assert fake.calls["terminate"] == 1 and not fake.alive


async def test_launch_failure_fails_jobs_and_cleans_up(env, fake):
    fake.launch_error = ErrorKind.NO_CAPACITY
    async with _worker(env, fake):
        h = await _start(env.client)
        await _submit(h, run="x")
        result = ClusterResult.model_validate(await h.result())
        assert result.status is ClusterStatus.TERMINATED
        assert "no capacity" in (result.reason or "")
        d = await _describe(h)
        assert d.jobs[0].status is JobStatus.FAILED
        assert fake.calls["provision"] == 1  # NoCapacity is not retried
        assert fake.calls["terminate"] == 1


async def test_down_cancels_the_running_job_and_terminates(live_env, fake):
    env = live_env
    async with _worker(env, fake):
        h = await _start(env.client)
        job = await _submit(h, run="long")
        await _until(h, lambda d: _job(d, job).status is JobStatus.RUNNING, "running")
        d = await h.execute_update("down", DownInput(), result_type=ClusterDescription)
        assert d.status is ClusterStatus.TERMINATED
        assert _job(d, job).status is JobStatus.CANCELLED
        assert fake.killed == [job]
        assert (ClusterResult.model_validate(await h.result())).status is ClusterStatus.TERMINATED
        assert not fake.alive


async def test_cancelling_the_workflow_still_terminates_nodes(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client)
        await _until(h, lambda d: d.status is ClusterStatus.UP, "up")
        await h.cancel()
        with pytest.raises(Exception):  # noqa: B017 - the workflow ends cancelled
            await h.result()
        assert fake.calls["terminate"] == 1 and not fake.alive


async def test_job_needing_more_nodes_than_the_cluster_is_rejected(env, fake):
    async with _worker(env, fake):
        h = await _start(env.client, num_nodes=1)
        with pytest.raises(WorkflowUpdateFailedError):
            await _submit(h, run="x", num_nodes=2)
        assert (await _describe(h)).jobs == []


async def test_down_that_cannot_release_nodes_fails_and_purge_forgets_them(env, fake):
    fake.terminate_error = ErrorKind.UNREACHABLE
    async with _worker(env, fake):
        h = await _start(env.client)
        await _until(h, lambda d: d.status is ClusterStatus.UP, "up")
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await h.execute_update("down", DownInput(), result_type=ClusterDescription)
        assert "--purge" in str(e.value.cause)
        assert (await _describe(h)).status is ClusterStatus.UP
        d = await h.execute_update("down", DownInput(purge=True), result_type=ClusterDescription)
        assert d.status is ClusterStatus.TERMINATED
        assert "purged" in (d.reason or "") and "host h1 gone" in (d.reason or "")
