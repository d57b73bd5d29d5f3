"""Following a job's output through the workers: a session reads the node's log files
(long polls: one request per burst of output) while the CLI asks the workflow for the
job's state (queries write nothing), until the job ends. The CLI itself never touches a
node, a key or a pool file."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from skyloom.activities.models import ClusterHandle, LogChunk, LogsInput, Phase
from skyloom.client.api import Rejected, SkyloomClient, WorkerError, WorkerSession
from skyloom.workflows.models import JobStatus, JobView, cluster_workflow_id
from skyloom.workflows.policies import failover_table

# Between two looks at a job's state (queries: they write nothing).
POLL_SECONDS = 0.2
# While a long poll waits, the job's state is looked at this often (a query: cheap).
MOVED_ON_SECONDS = 0.1
# A follower's long poll: the worker waits this long for more output before answering.
WAIT_SECONDS = 5.0
# Between two reads while output pours out, so bursts are batched into few requests;
# a read answered faster than POURING_SECONDS found output already waiting.
MIN_READ_INTERVAL = 0.5
POURING_SECONDS = 0.05


def _tail(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:]) if n > 0 else b""


class LogReader:
    """Offsets per log, reads through a session, and one warning when a node is out of
    reach (the job's state still comes from the engine, so following goes on)."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session
        self.offsets: dict[tuple[str, int, str], int] = {}
        self.warned = False

    async def read(
        self,
        key: str,
        phase: Phase,
        *,
        workflow_id: str | None = None,
        cluster: str | None = None,
        job_id: int = 1,
        rank: int = 0,
        saved: str | None = None,
        wait: float = 0.0,
    ) -> bytes:
        """The log's bytes past what was read before under `key`: a live cluster's (its
        workflow id) or a copy the worker kept (`saved`). The offset moves only when the
        bytes are handed back: a read cancelled half-way is read again, never lost."""
        k = (key, rank, phase.value)
        offset = self.offsets.get(k, 0)
        out = b""
        while True:
            try:
                chunk: LogChunk = await self.session.read_logs(
                    LogsInput(
                        workflow_id=None if saved else workflow_id,
                        cluster=cluster,
                        job_id=job_id,
                        rank=rank,
                        phase=phase,
                        saved=saved,
                        offset=offset,
                        wait_seconds=wait if not out else 0.0,
                    )
                )
            except WorkerError as e:
                if not self.warned:
                    print(f"(cannot read node {rank}'s log: {e})", file=sys.stderr)
                    self.warned = True
                break
            offset = chunk.offset
            out += chunk.data
            if not chunk.more:
                break
        self.offsets[k] = offset
        return out


async def until_done(
    read: Awaitable[bytes], done: Callable[[], Awaitable[bool]]
) -> tuple[bytes | None, bool]:
    """Wait for a long-poll read, asking `done` every MOVED_ON_SECONDS meanwhile: (the
    bytes read, or None when the job moved on first; whether it did)."""
    task = asyncio.ensure_future(read)
    while True:
        finished, _ = await asyncio.wait({task}, timeout=MOVED_ON_SECONDS)
        if finished:
            return task.result(), False
        if await done():
            if task.done():
                # It answered while we asked: its bytes are read (and counted) already.
                return task.result(), True
            # Nobody waits for that read any more; its bytes are read again from the same
            # offset by the caller (a cancelled read does not move the offset).
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if task.done() and not task.cancelled() and task.exception() is None:
                return task.result(), True
            return None, True


async def stream_job(
    sky: SkyloomClient,
    cluster: str,
    job_id: int | None,
    *,
    follow: bool,
    tail: int | None = None,
    rank: int = 0,
    session: WorkerSession | None = None,
) -> JobView:
    """Write the job's setup then run output to stdout; return the job as it ended.
    Reads go through `session` when given (the caller closes it), else through a new one."""
    own = session is None
    session = session or sky.session()
    try:
        return await _stream(sky, session, cluster, job_id, follow, tail, rank)
    finally:
        if own:
            await session.close()


async def _stream(
    sky: SkyloomClient,
    session: WorkerSession,
    cluster: str,
    job_id: int | None,
    follow: bool,
    tail: int | None,
    rank: int,
) -> JobView:
    reader = LogReader(session)
    out = sys.stdout.buffer
    first = True
    setup_done = False
    attempts_shown = 0
    loop = asyncio.get_running_loop()
    while True:
        desc = await sky.describe(cluster)
        # Each placement that gave no nodes, as it happens (the failover table).
        for attempt in desc.launch_attempts[attempts_shown:]:
            row = failover_table([attempt]).strip()
            print(f"(no nodes from {row})", file=sys.stderr)
        attempts_shown = len(desc.launch_attempts)
        if job_id is None:
            if not desc.jobs:
                raise Rejected(f"cluster {cluster} has no jobs")
            job_id = desc.jobs[-1].id
        job = next((j for j in desc.jobs if j.id == job_id), None)
        if job is None:
            raise Rejected(f"cluster {cluster} has no job {job_id}")
        ended = job.status.terminal or not follow
        pause = POLL_SECONDS  # nothing to read yet: look at the state again soon
        if desc.handle is not None and job.started_at is not None:
            handle = desc.handle
            if rank >= len(handle.nodes):
                raise Rejected(
                    f"--node-rank {rank}: cluster {cluster} has {len(handle.nodes)} node(s)"
                )
            key = f"{cluster}/{job_id}"
            chunk = b""
            started = loop.time()
            moved = False
            in_setup = job.status is JobStatus.SETTING_UP and not ended
            if in_setup:
                chunk, moved = await _read(
                    reader, key, Phase.SETUP, handle, job_id, rank, True, sky
                )
            else:
                # Setup's log is final once the job runs: its rest and the run's output are
                # read together (one round trip less between the two).
                setup, (run, moved) = await asyncio.gather(
                    _read(reader, key, Phase.SETUP, handle, job_id, rank, False, sky)
                    if not setup_done
                    else _nothing(),
                    _read(reader, key, Phase.RUN, handle, job_id, rank, not ended, sky),
                )
                setup_done = True
                chunk = setup[0] + run
            if first and tail is not None:
                chunk = _tail(chunk, tail)
            first = False
            if chunk:
                out.write(chunk)
                out.flush()
            # Read again at once when the job moved on, or when the output came after a
            # wait (it is sparse: show the next line as soon as it comes); output already
            # there is pouring out: let the next read gather a batch of it.
            took = loop.time() - started
            pouring = chunk and not moved and took < POURING_SECONDS
            pause = max(0.0, MIN_READ_INTERVAL - took) if pouring else 0.0
        if ended:
            return job
        await asyncio.sleep(pause)


async def _nothing() -> tuple[bytes, bool]:
    return b"", False


async def _read(
    reader: LogReader,
    key: str,
    phase: Phase,
    handle: ClusterHandle,
    job_id: int,
    rank: int,
    live: bool,
    sky: SkyloomClient,
) -> tuple[bytes, bool]:
    """One read: (bytes, whether the job's state moved on meanwhile). While the phase is
    live it is a long poll that gives up when the job's state moves on (the state is then
    read again by the caller, and the rest of the log)."""
    wid, cluster = cluster_workflow_id(handle.cluster), handle.cluster
    if not live:
        once = await reader.read(
            key, phase, workflow_id=wid, cluster=cluster, job_id=job_id, rank=rank
        )
        return once, False

    async def moved_on() -> bool:
        d = await sky.describe(cluster)
        j = next((j for j in d.jobs if j.id == job_id), None)
        want = JobStatus.SETTING_UP if phase is Phase.SETUP else JobStatus.RUNNING
        return j is None or j.status is not want

    data, moved = await until_done(
        reader.read(
            key,
            phase,
            workflow_id=wid,
            cluster=cluster,
            job_id=job_id,
            rank=rank,
            wait=WAIT_SECONDS,
        ),
        moved_on,
    )
    return data or b"", moved
