"""The cluster workflow's pure decisions, without Temporal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from skyloom.workflows import policies
from skyloom.workflows.models import AutostopConfig, JobRecord, JobSpec, JobStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(i: int, status: JobStatus) -> JobRecord:
    return JobRecord(id=i, status=status, submitted_at=T0, spec=JobSpec())


def test_next_job_is_oldest_pending_and_only_when_nothing_runs():
    assert (
        policies.next_job(
            [job(1, JobStatus.SUCCEEDED), job(2, JobStatus.PENDING), job(3, JobStatus.PENDING)]
        ).id
        == 2
    )
    assert policies.next_job([job(1, JobStatus.RUNNING), job(2, JobStatus.PENDING)]) is None
    assert policies.next_job([job(1, JobStatus.SETTING_UP), job(2, JobStatus.PENDING)]) is None
    assert policies.next_job([job(1, JobStatus.CANCELLED)]) is None


def test_autostop_deadline_counts_from_last_activity():
    cfg = AutostopConfig(idle_minutes=5)
    assert policies.autostop_deadline(cfg, [], T0) == T0 + timedelta(minutes=5)
    assert policies.autostop_deadline(cfg, [job(1, JobStatus.FAILED)], T0) == T0 + timedelta(
        minutes=5
    )


def test_autostop_never_fires_while_busy_or_off():
    cfg = AutostopConfig(idle_minutes=0)
    for busy in (JobStatus.PENDING, JobStatus.SETTING_UP, JobStatus.RUNNING):
        assert policies.autostop_deadline(cfg, [job(1, busy)], T0) is None
    assert policies.autostop_deadline(AutostopConfig(), [], T0) is None
    assert policies.autostop_deadline(AutostopConfig(idle_minutes=-1), [], T0) is None
    assert policies.autostop_deadline(cfg, [], None) is None


def test_phase_outcome():
    assert policies.phase_outcome([0, 0], setup=True) == (JobStatus.RUNNING, 0, None)
    assert policies.phase_outcome([0, 0], setup=False) == (JobStatus.SUCCEEDED, 0, None)
    assert policies.phase_outcome([0, 2], setup=True) == (JobStatus.FAILED_SETUP, 2, 1)
    # A node whose process vanished (no exit code) failed too.
    assert policies.phase_outcome([None, 0], setup=False) == (JobStatus.FAILED, None, 0)


def test_trim_history_keeps_live_jobs_and_newest_finished():
    jobs = [job(i, JobStatus.SUCCEEDED) for i in range(1, 6)] + [job(6, JobStatus.PENDING)]
    kept = policies.trim_history(jobs, keep_finished=2)
    assert [j.id for j in kept] == [4, 5, 6]
    assert policies.trim_history(jobs, keep_finished=10) == jobs
