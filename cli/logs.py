"""Following a job's output: read the per-node log files while asking the workflow for
the job's state, until the job ends."""

from __future__ import annotations

import asyncio
import sys

from skyloom.activities.models import Phase, log_path
from skyloom.client.api import Rejected, SkyloomClient, node_handle
from skyloom.client.config import home
from skyloom.worker.providers import build_providers
from skyloom.workflows.models import JobView
from temporalio.exceptions import ApplicationError

POLL_SECONDS = 0.3


def _tail(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:]) if n > 0 else b""


async def stream_job(
    sky: SkyloomClient,
    cluster: str,
    job_id: int | None,
    *,
    follow: bool,
    tail: int | None = None,
    rank: int = 0,
) -> JobView:
    """Write the job's setup then run output to stdout; return the job as it ended."""
    providers = build_providers(home())
    offsets = {Phase.SETUP: 0, Phase.RUN: 0}
    first = True
    warned = False
    out = sys.stdout.buffer
    while True:
        desc = await sky.describe(cluster)
        if job_id is None:
            if not desc.jobs:
                raise Rejected(f"cluster {cluster} has no jobs")
            job_id = desc.jobs[-1].id
        job = next((j for j in desc.jobs if j.id == job_id), None)
        if job is None:
            raise Rejected(f"cluster {cluster} has no job {job_id}")
        if desc.handle is not None and job.started_at is not None:
            handle = node_handle(desc)
            if rank >= len(handle.nodes):
                raise Rejected(f"cluster {cluster} has no node rank {rank}")
            node = handle.nodes[rank]
            runner = providers.get(handle.infra).runner(node)
            # Read the state first and the files after: output written before the job
            # ended is then never missed on the last round.
            chunk = b""
            for phase in (Phase.SETUP, Phase.RUN):
                try:
                    data = await asyncio.to_thread(
                        runner.read_file, log_path(node, job.id, phase), offsets[phase]
                    )
                except ApplicationError as e:
                    # The node is out of reach from here; the job's state still comes
                    # from the engine, so keep following and say so once.
                    if not warned:
                        print(f"(cannot read node {rank}'s log: {e.message})", file=sys.stderr)
                        warned = True
                    break
                offsets[phase] += len(data)
                chunk += data
            if first and tail is not None:
                chunk = _tail(chunk, tail)
            first = False
            if chunk:
                out.write(chunk)
                out.flush()
        if job.status.terminal or not follow:
            return job
        await asyncio.sleep(POLL_SECONDS)
