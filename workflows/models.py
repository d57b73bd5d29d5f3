"""Inputs, results and state of the cluster workflow: the payloads clients send and read.

These are the documented JSON shapes for clients in other languages; fields may be added,
never repurposed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field
from skyloom.activities.models import ClusterHandle
from skyloom.workflows.recovery import RecoveryPolicy

TASK_QUEUE = "skyloom"
CLUSTER_WORKFLOW = "ClusterWorkflow"


def cluster_workflow_id(name: str) -> str:
    return f"cluster-{name}"


class ClusterStatus(StrEnum):
    INIT = "INIT"
    UP = "UP"
    STOPPED = "STOPPED"
    # Not a SkyPilot state: the workflow's last word, after which it is no longer listed.
    TERMINATED = "TERMINATED"


class JobStatus(StrEnum):
    PENDING = "PENDING"
    SETTING_UP = "SETTING_UP"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.FAILED_SETUP, JobStatus.CANCELLED}


class JobSpec(BaseModel):
    """What one job runs. `secrets` never leave the workflow through queries or memo."""

    name: str | None = None
    setup: str | None = None
    run: str | None = None
    envs: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    file_mounts: dict[str, str] = Field(default_factory=dict)
    num_nodes: int = 1
    num_gpus_per_node: float = 0


class JobRecord(BaseModel):
    id: int
    name: str | None = None
    status: JobStatus = JobStatus.PENDING
    submitted_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    failed_rank: int | None = None
    reason: str | None = None
    num_nodes: int = 1
    has_setup: bool = False
    spec: JobSpec


class AutostopConfig(BaseModel):
    idle_minutes: int | None = None  # None: autostop off
    down: bool = False


class ClusterInput(BaseModel):
    name: str
    infra: str = "local"
    num_nodes: int = 1
    resources: dict = Field(default_factory=dict)
    autostop: AutostopConfig = Field(default_factory=AutostopConfig)
    user: str = ""
    # Seconds between looks at a running job on its nodes.
    poll_seconds: float = 1.0
    # Set when the workflow continues as new: everything it knew.
    carried: ClusterState | None = None


class ClusterState(BaseModel):
    status: ClusterStatus = ClusterStatus.INIT
    # Set once at the first run: tells this cluster's nodes from an older namesake's.
    uid: str = ""
    handle: ClusterHandle | None = None
    jobs: list[JobRecord] = Field(default_factory=list)
    next_job_id: int = 1
    launched_at: datetime | None = None
    last_active: datetime | None = None
    autostop: AutostopConfig = Field(default_factory=AutostopConfig)
    reason: str | None = None


class SubmitJobInput(BaseModel):
    spec: JobSpec


class SubmitJobResult(BaseModel):
    job_id: int


class CancelJobsInput(BaseModel):
    job_ids: list[int] = Field(default_factory=list)
    all: bool = False


class CancelJobsResult(BaseModel):
    cancelled: list[int]


class StopInput(BaseModel):
    pass


class DownInput(BaseModel):
    # Forget nodes that cannot be released (a host gone for good) instead of failing.
    purge: bool = False


class StartInput(BaseModel):
    pass


class AutostopInput(BaseModel):
    idle_minutes: int | None  # None or negative: cancel autostop
    down: bool = False


class JobView(BaseModel):
    """A job as clients see it (no secrets)."""

    id: int
    name: str | None
    status: JobStatus
    submitted_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    failed_rank: int | None
    reason: str | None
    num_nodes: int
    has_setup: bool


class ClusterDescription(BaseModel):
    name: str
    status: ClusterStatus
    infra: str
    num_nodes: int
    resources: dict
    handle: ClusterHandle | None
    launched_at: datetime | None
    autostop: AutostopConfig
    reason: str | None
    jobs: list[JobView]


class ClusterResult(BaseModel):
    name: str
    status: ClusterStatus
    reason: str | None = None


# ---- managed jobs ----------------------------------------------------------------------

MANAGED_JOB_WORKFLOW = "ManagedJobWorkflow"
JOB_IDS_WORKFLOW = "JobIdsWorkflow"
JOB_IDS_WORKFLOW_ID = "skyloom-job-ids"
# The watcher's signal to a workflow: list[Observation] of phases ended / nodes preempted.
OBSERVE_SIGNAL = "observe"
# A managed job runs as job 1 of each cluster it launches.
MANAGED_JOB_ON_CLUSTER = 1
CANCEL_SIGNAL = "cancel"


def managed_job_workflow_id(job_id: int) -> str:
    return f"job-{job_id}"


class ManagedJobStatus(StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"
    FAILED_PRECHECKS = "FAILED_PRECHECKS"
    FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"

    @property
    def terminal(self) -> bool:
        return self in _MJ_TERMINAL


_MJ_TERMINAL = {
    ManagedJobStatus.SUCCEEDED,
    ManagedJobStatus.CANCELLED,
    ManagedJobStatus.FAILED,
    ManagedJobStatus.FAILED_SETUP,
    ManagedJobStatus.FAILED_PRECHECKS,
    ManagedJobStatus.FAILED_NO_RESOURCE,
}


class Candidate(BaseModel):
    """One place the task may run (an entry of any_of/ordered, or the resources)."""

    infra: str
    resources: dict = Field(default_factory=dict)


class ManagedTask(BaseModel):
    spec: JobSpec
    candidates: list[Candidate]


class ManagedJobInput(BaseModel):
    job_id: int
    name: str
    tasks: list[ManagedTask]
    recovery: RecoveryPolicy = Field(default_factory=RecoveryPolicy)
    user: str = ""
    # With no news from a watcher for this long, the workflow looks itself (safety net).
    # Each look is ~10 history events and an activity: every 5 min, 10,000 waiting jobs
    # made 33 looks a second, a third of the engine's work; the watcher is the real path.
    check_every_seconds: float = 1800.0
    # Between launch retries while recovering (no capacity anywhere).
    retry_launch_seconds: float = 30.0


class ManagedJobView(BaseModel):
    id: int
    name: str
    status: ManagedJobStatus
    recovery_count: int = 0
    restarts: int = 0
    cluster: str | None = None
    infra: str | None = None
    task_index: int = 0
    num_tasks: int = 1
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    handle: ClusterHandle | None = None
    events: list[str] = Field(default_factory=list)
