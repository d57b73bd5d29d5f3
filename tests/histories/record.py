"""Record workflow histories for the replay test.

    python -m tests.histories.record

Runs a few lifecycles on a throwaway dev server with the fake activities of the workflow
tests and writes each history as JSON here. Re-record only on purpose: a change to a
workflow that fails replay of the old histories would break the clusters and jobs that
are running now (guard such a change with workflow.patched() instead).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from skyloom.activities.models import OBSERVE_SIGNAL, Candidate, Phase
from skyloom.workflows import search
from skyloom.workflows.cluster import ClusterWorkflow
from skyloom.workflows.managed_job import ManagedJobWorkflow
from skyloom.workflows.models import (
    CancelJobsInput,
    ClusterDescription,
    ClusterInput,
    DownInput,
    JobSpec,
    JobStatus,
    ManagedJobInput,
    ManagedTask,
    StartInput,
    StopInput,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflows.fakes import FakeCloud, ended, preempted
from tests.workflows.test_cluster_workflow import _job, _submit, _until

HERE = Path(__file__).parent
QUEUE = "record"


async def cluster_lifecycle(client: Client, fake: FakeCloud):
    """Failover to a second placement, a job with setup, a failing job, a cancelled job,
    stop, start, down."""
    fake.no_capacity = {"ssh/full"}
    h = await client.start_workflow(
        ClusterWorkflow.run,
        ClusterInput(
            name="lifecycle",
            num_nodes=2,
            candidates=[Candidate(infra="ssh/full"), Candidate(infra="local")],
        ),
        id="cluster-lifecycle",
        task_queue=QUEUE,
    )
    fake.release(1, "setup", [0, 0])
    fake.release(1, "run", [0, 0])
    fake.release(2, "run", [0, 5])
    await _submit(h, setup="s", run="r", num_nodes=2)
    await _submit(h, run="fails", num_nodes=2)
    third = await _submit(h, run="long")
    await _until(h, lambda d: _job(d, third).status is JobStatus.RUNNING, "job 3 runs")
    await h.execute_update("cancel_jobs", CancelJobsInput(job_ids=[third]))
    await h.execute_update("stop", StopInput(), result_type=ClusterDescription)
    await h.execute_update("start", StartInput(), result_type=ClusterDescription)
    await h.execute_update("down", DownInput(), result_type=ClusterDescription)
    await h.result()
    return h


def _job_input(job_id: int, continue_after_events: int | None = None) -> ManagedJobInput:
    return ManagedJobInput(
        job_id=job_id,
        name="lifecycle",
        tasks=[
            ManagedTask(
                spec=JobSpec(setup="s", run="r"),
                candidates=[Candidate(infra="local"), Candidate(infra="ssh/lab")],
            )
        ],
        continue_after_events=continue_after_events,
    )


async def _phase(fake: FakeCloud, cluster: str, which: Phase):
    while True:
        found = [p for p in fake.started(which) if p.handle.cluster == cluster]
        if found:
            return found[-1]
        await asyncio.sleep(0.02)


async def managed_job_lifecycle(client: Client, fake: FakeCloud):
    """Setup and run, a preemption and its recovery on the next placement, success."""
    h = await client.start_workflow(
        ManagedJobWorkflow.run, _job_input(1), id="job-1", task_queue=QUEUE
    )
    await h.signal(OBSERVE_SIGNAL, [ended(await _phase(fake, "job-1-1", Phase.SETUP))])
    await h.signal(OBSERVE_SIGNAL, [preempted(await _phase(fake, "job-1-1", Phase.RUN))])
    await h.signal(OBSERVE_SIGNAL, [ended(await _phase(fake, "job-1-2", Phase.SETUP))])
    await h.signal(OBSERVE_SIGNAL, [ended(await _phase(fake, "job-1-2", Phase.RUN))])
    await h.result()
    return h


async def managed_job_continued(client: Client, fake: FakeCloud):
    """A job that continues as new while it waits, and the run that picks it up."""
    h = await client.start_workflow(
        ManagedJobWorkflow.run, _job_input(2, continue_after_events=10), id="job-2",
        task_queue=QUEUE,
    )  # fmt: skip
    first_run = (await h.describe()).run_id
    latest = client.get_workflow_handle("job-2")
    while (await latest.describe()).run_id == first_run:
        await asyncio.sleep(0.05)
    await latest.signal(OBSERVE_SIGNAL, [ended(await _phase(fake, "job-2-1", Phase.SETUP))])
    await latest.signal(OBSERVE_SIGNAL, [ended(await _phase(fake, "job-2-1", Phase.RUN))])
    await latest.result()
    return client.get_workflow_handle("job-2", run_id=first_run), latest


async def main() -> None:
    temporal = Path(sys.executable).parent / "temporal"
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal),
        search_attributes=list(search.ALL),
    ) as env:
        histories = {}
        for record in (cluster_lifecycle, managed_job_lifecycle, managed_job_continued):
            fake = FakeCloud()  # each lifecycle scripts its own cloud
            fake.client = env.client
            async with Worker(
                env.client,
                task_queue=QUEUE,
                workflows=[ClusterWorkflow, ManagedJobWorkflow],
                activities=fake.all(),
            ):
                handles = await record(env.client, fake)
            # Files are named by workflow id (runs of one id numbered): replay needs the id.
            if record is managed_job_continued:
                first, second = handles
                histories[f"{first.id}.1"] = await first.fetch_history()
                histories[f"{second.id}.2"] = await second.fetch_history()
            else:
                histories[handles.id] = await handles.fetch_history()
        for name, history in histories.items():
            (HERE / f"{name}.json").write_text(history.to_json())
            print(f"{name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main())
