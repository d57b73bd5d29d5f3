"""Record cluster-workflow histories for the replay test.

    python -m tests.histories.record

Runs a few lifecycles on a throwaway dev server with the fake activities of the workflow
tests and writes each history as JSON here. Re-record only on purpose: a change to the
workflow that fails replay of the old histories would break running clusters.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from skyloom.workflows import search
from skyloom.workflows.models import (
    CancelJobsInput,
    ClusterDescription,
    DownInput,
    JobStatus,
    StartInput,
    StopInput,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.workflows.test_cluster_workflow import (
    FakeNodes,
    _job,
    _start,
    _submit,
    _until,
    _worker,
)

HERE = Path(__file__).parent


async def lifecycle(env, fake: FakeNodes):
    """Launch, a job with setup, a failing job, a cancelled job, stop, start, down."""
    h = await _start(env.client, num_nodes=2)
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


async def main() -> None:
    temporal = Path(sys.executable).parent / "temporal"
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal),
        search_attributes=list(search.ALL),
    ) as env:
        fake = FakeNodes()
        async with _worker(env, fake):
            h = await lifecycle(env, fake)
        history = await h.fetch_history()
        (HERE / "cluster_lifecycle.json").write_text(history.to_json())
        print(f"wrote {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main())
