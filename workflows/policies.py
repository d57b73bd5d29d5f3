"""Pure decisions the cluster workflow makes: which job runs next, when autostop fires,
and what a finished phase means. No Temporal, no I/O: tested as plain functions.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from skyloom.workflows.models import AutostopConfig, JobRecord, JobStatus

ACTIVE = (JobStatus.SETTING_UP, JobStatus.RUNNING)


def next_job(jobs: list[JobRecord]) -> JobRecord | None:
    """FIFO: the oldest PENDING job, only when nothing is running (one job owns the nodes)."""
    if any(j.status in ACTIVE for j in jobs):
        return None
    return next((j for j in jobs if j.status is JobStatus.PENDING), None)


def is_idle(jobs: list[JobRecord]) -> bool:
    return not any(j.status is JobStatus.PENDING or j.status in ACTIVE for j in jobs)


def autostop_deadline(
    cfg: AutostopConfig, jobs: list[JobRecord], last_active: datetime | None
) -> datetime | None:
    """When the idle cluster should stop, or None when autostop is off or it is busy."""
    if cfg.idle_minutes is None or cfg.idle_minutes < 0 or last_active is None:
        return None
    if not is_idle(jobs):
        return None
    return last_active + timedelta(minutes=cfg.idle_minutes)


def phase_outcome(
    exit_codes: list[int | None], setup: bool
) -> tuple[JobStatus, int | None, int | None]:
    """(status, exit code, failed rank) for a phase's per-node exit codes.

    A node whose process vanished without an exit code (killed, node lost) counts as a
    failure with no code.
    """
    for rank, code in enumerate(exit_codes):
        if code != 0:
            return (JobStatus.FAILED_SETUP if setup else JobStatus.FAILED), code, rank
    return (JobStatus.RUNNING if setup else JobStatus.SUCCEEDED), 0, None


def trim_history(jobs: list[JobRecord], keep_finished: int) -> list[JobRecord]:
    """Bound the state carried across continue-as-new: drop the oldest finished jobs."""
    finished = [j for j in jobs if j.status.terminal]
    if len(finished) <= keep_finished:
        return jobs
    drop = {j.id for j in finished[: len(finished) - keep_finished]}
    return [j for j in jobs if j.id not in drop]
