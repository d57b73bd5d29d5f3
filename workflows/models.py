"""Inputs, results and state of skyloom's workflows: the payloads clients send and read.

These are the documented JSON shapes for clients in other languages (docs/workflows.md);
fields may be added, never repurposed. Names of workflow types, updates, queries and
signals are constants here, used by the workflows' decorators and by every client.

Every workflow checks its own input (`problems()`): a client in another service may send
anything, and a bad input must fail the workflow at once, having created nothing.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from skyloom.activities.models import (
    ANY_INFRA,
    DESCRIBE,
    Candidate,
    Capability,
    ClusterHandle,
    ClusterRef,
    LaunchAttempt,
    Observation,
    ProbeSpec,
)
from skyloom.activities.models import OBSERVE_SIGNAL as OBSERVE_SIGNAL
from skyloom.spec.names import name_problem
from skyloom.workflows.autoscaler import ScalePolicy, ScaleState
from skyloom.workflows.recovery import RecoveryPolicy

TASK_QUEUE = "skyloom"
# Watchers' activities run here, on the workers that can reach the infra and are not
# told otherwise (SKYLOOM_WATCH_SECONDS=0).
WATCH_TASK_QUEUE = "skyloom-watch"

CLUSTER_WORKFLOW = "ClusterWorkflow"
MANAGED_JOB_WORKFLOW = "ManagedJobWorkflow"
JOB_IDS_WORKFLOW = "JobIdsWorkflow"
JOB_IDS_WORKFLOW_ID = "skyloom-job-ids"
WATCHER_WORKFLOW = "WatcherWorkflow"
SESSION_WORKFLOW = "SessionWorkflow"


class ClusterUpdate(StrEnum):
    SUBMIT_JOB = "submit_job"
    CANCEL_JOBS = "cancel_jobs"
    STOP = "stop"
    START = "start"
    DOWN = "down"
    SET_AUTOSTOP = "set_autostop"


class SessionUpdate(StrEnum):
    PLAN = "plan"
    CHECK = "check"
    PREEMPT = "preempt"
    READ_LOGS = "read_logs"
    SAVED_LOGS = "saved_logs"
    SHOW_GPUS = "show_gpus"
    REFRESH_CATALOG = "refresh_catalog"


DESCRIBE_QUERY = DESCRIBE
CANCEL_SIGNAL = "cancel"
CLOSE_SIGNAL = "close"
ALLOCATE_UPDATE = "allocate"

# Bounds on what a workflow accepts from any client.
MAX_NODES = 512
MAX_TASKS = 100


def cluster_workflow_id(name: str) -> str:
    return f"cluster-{name}"


def managed_job_workflow_id(job_id: int) -> str:
    return f"job-{job_id}"


def watcher_workflow_id(key: str) -> str:
    return f"skyloom-watch-{key.replace('/', '-')}"


def _infra_problem(infra: object, field: str) -> str | None:
    if not isinstance(infra, str) or not infra.strip():
        return f"{field}: expected an infra such as local or ssh/<pool>"
    if any(c.isspace() or c in "\"'`$;&|<>\\" for c in infra) or ".." in infra:
        return f"{field}: {infra!r} is not an infra name"
    return None


def _timing_problem(
    check_every: float, retry_launch: float | None, continue_after: int | None
) -> str | None:
    """Intervals that would make a workflow spin or fail its own timers."""
    if not check_every >= 1:
        return f"check_every_seconds: expected at least 1, got {check_every}"
    if retry_launch is not None and not retry_launch >= 1:
        return f"retry_launch_seconds: expected at least 1, got {retry_launch}"
    if continue_after is not None and continue_after < 10:
        return f"continue_after_events: expected at least 10, got {continue_after}"
    return None


def _candidates_problem(candidates: list[Candidate]) -> str | None:
    for i, cand in enumerate(candidates):
        problem = _infra_problem(cand.infra, f"candidates[{i}].infra")
        if problem:
            return problem
    return None


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

    def problems(self) -> str | None:
        if not 1 <= self.num_nodes <= MAX_NODES:
            return f"spec.num_nodes: expected 1 to {MAX_NODES}, got {self.num_nodes}"
        for what, env in (("envs", self.envs), ("secrets", self.secrets)):
            for key in env:
                if not key.isidentifier() or not key.isascii():
                    return f"spec.{what}: {key!r} is not a variable name"
        for target in self.file_mounts:
            if not target or "\n" in target:
                return f"spec.file_mounts: {target!r} is not a path"
        return None


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
    # Where to run when `candidates` is empty (the shape a foreign client sends); `*`:
    # the cheapest cloud enabled on the workers, or the local machine when none is.
    infra: str = ANY_INFRA
    num_nodes: int = 1
    resources: dict[str, Any] = Field(default_factory=dict)
    # any_of / ordered: the places to try; empty means [Candidate(infra, resources)].
    candidates: list[Candidate] = Field(default_factory=list)
    # True: try candidates in the given order (`ordered`); False: cheapest first (any_of).
    ordered: bool = False
    autostop: AutostopConfig = Field(default_factory=AutostopConfig)
    user: str = ""
    # Unused since jobs are watched by the shared watcher (kept: recorded inputs carry it).
    poll_seconds: float = 1.0
    # With no news from a watcher for this long, the workflow looks at its nodes itself.
    check_every_seconds: float = 1800.0
    # Continue as new past this many history events even if Temporal does not suggest it
    # yet (tests use it; None: when suggested).
    continue_after_events: int | None = None
    # Set when the workflow continues as new: everything it knew.
    carried: ClusterState | None = None

    def all_candidates(self) -> list[Candidate]:
        return self.candidates or [Candidate(infra=self.infra, resources=self.resources)]

    def problems(self, workflow_id: str | None = None) -> str | None:
        """What makes this input unacceptable, or None. The workflow's id must be the one
        its name gives (`cluster-<name>`): clients and the watcher find it by that."""
        problem = name_problem(self.name)
        if problem:
            return f"name: {problem}"
        if workflow_id is not None and workflow_id != cluster_workflow_id(self.name):
            return f"workflow id {workflow_id!r}: expected {cluster_workflow_id(self.name)!r}"
        if not 1 <= self.num_nodes <= MAX_NODES:
            return f"num_nodes: expected 1 to {MAX_NODES}, got {self.num_nodes}"
        return (
            _timing_problem(self.check_every_seconds, None, self.continue_after_events)
            or _infra_problem(self.infra, "infra")
            or _candidates_problem(self.all_candidates())
        )


class ClusterState(BaseModel):
    status: ClusterStatus = ClusterStatus.INIT
    # Set once at the first run: tells this cluster's nodes from an older namesake's.
    uid: str = ""
    handle: ClusterHandle | None = None
    # Where the nodes are (the placement that gave them), once launched.
    infra: str | None = None
    jobs: list[JobRecord] = Field(default_factory=list)
    next_job_id: int = 1
    launched_at: datetime | None = None
    last_active: datetime | None = None
    autostop: AutostopConfig = Field(default_factory=AutostopConfig)
    reason: str | None = None
    # Placements tried that gave no nodes, in order (the failover table).
    launch_attempts: list[LaunchAttempt] = Field(default_factory=list)


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
    # Where the cluster runs: its placement once launched, else what was asked.
    infra: str
    num_nodes: int
    resources: dict[str, Any]
    handle: ClusterHandle | None
    launched_at: datetime | None
    autostop: AutostopConfig
    reason: str | None
    jobs: list[JobView]
    launch_attempts: list[LaunchAttempt] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default_factory=list)


class ClusterResult(BaseModel):
    name: str
    status: ClusterStatus
    reason: str | None = None


# ---- managed jobs ----------------------------------------------------------------------

# A managed job runs as job 1 of each cluster it launches.
MANAGED_JOB_ON_CLUSTER = 1


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


class ManagedTask(BaseModel):
    spec: JobSpec
    candidates: list[Candidate]
    # True: try candidates in the given order (`ordered`); False: cheapest first (any_of).
    ordered: bool = False


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
    # The most nodes any of its tasks runs on (the ranks its logs can have).
    num_nodes: int = 1
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    handle: ClusterHandle | None = None
    events: list[str] = Field(default_factory=list)
    # The last launch's placements that gave no nodes (the failover table).
    launch_attempts: list[LaunchAttempt] = Field(default_factory=list)


class AttemptStage(StrEnum):
    """How far the current attempt has come (where a continued run picks it up)."""

    SYNC = "SYNC"
    SETUP = "SETUP"
    RUN = "RUN"


class CurrentAttempt(BaseModel):
    cluster: str
    handle: ClusterHandle
    # Index of the placement it runs on (where the next launch starts from).
    placement: int
    stage: AttemptStage = AttemptStage.SYNC


class ManagedJobState(BaseModel):
    """Everything a managed job knows; carried whole when it continues as new."""

    view: ManagedJobView
    attempts: int = 0
    restarts: int = 0
    # Where the last attempt ran (placement index and `<candidate>:<where>`, to find it in
    # the next plan), and whether to move on from there.
    last_placement: int | None = None
    last_where: str | None = None
    move_on: bool = False
    # Clusters launched (or being launched) and not yet terminated.
    live: dict[str, ClusterRef] = Field(default_factory=dict)
    current: CurrentAttempt | None = None
    # What the watcher told about the current cluster.
    observed: list[Observation] = Field(default_factory=list)
    cancel_requested: bool = False


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
    # Continue as new past this many history events even if Temporal does not suggest it
    # yet (tests use it; None: when suggested).
    continue_after_events: int | None = None
    # Set when the workflow continues as new.
    carried: ManagedJobState | None = None

    def problems(self, workflow_id: str | None = None) -> str | None:
        problem = name_problem(self.name)
        if problem:
            return f"name: {problem}"
        if self.job_id < 1:
            return f"job_id: expected a positive id, got {self.job_id}"
        if workflow_id is not None and workflow_id != managed_job_workflow_id(self.job_id):
            want = managed_job_workflow_id(self.job_id)
            return f"workflow id {workflow_id!r}: expected {want!r}"
        if not 1 <= len(self.tasks) <= MAX_TASKS:
            return f"tasks: expected 1 to {MAX_TASKS} tasks, got {len(self.tasks)}"
        timing = _timing_problem(
            self.check_every_seconds, self.retry_launch_seconds, self.continue_after_events
        )
        if timing:
            return timing
        for i, task in enumerate(self.tasks):
            if not task.candidates:
                return f"tasks[{i}].candidates: expected at least one place to run"
            problem = task.spec.problems() or _candidates_problem(task.candidates)
            if problem:
                return f"tasks[{i}].{problem}"
        return None


# ---- watchers and sessions -------------------------------------------------------------


class WatcherInput(BaseModel):
    key: str


class SessionInput(BaseModel):
    # The session ends after this long with no request from its client.
    idle_seconds: float = 120.0


class PreemptRequest(BaseModel):
    cluster: str
    infra: str = "local"

    def problems(self) -> str | None:
        problem = name_problem(self.cluster)
        return f"cluster: {problem}" if problem else _infra_problem(self.infra, "infra")


# ---- services --------------------------------------------------------------------------

SERVICE_WORKFLOW = "ServiceWorkflow"
MAX_REPLICAS = 64


class ServiceUpdate(StrEnum):
    UPDATE = "update"
    DOWN = "down"


def service_workflow_id(name: str) -> str:
    return f"service-{name}"


class ServiceStatus(StrEnum):
    """SkyServe's service states (CONTROLLER_INIT and CONTROLLER_FAILED have no meaning
    here: the controller is the workflow)."""

    REPLICA_INIT = "REPLICA_INIT"  # replicas launching, none READY yet
    READY = "READY"  # at least one replica takes traffic
    NO_REPLICA = "NO_REPLICA"  # none wanted (min_replicas 0), or all gone
    SHUTTING_DOWN = "SHUTTING_DOWN"
    FAILED = "FAILED"  # the current version keeps failing; `serve update` to fix
    FAILED_CLEANUP = "FAILED_CLEANUP"  # down could not release every replica
    DOWN = "DOWN"  # the workflow's last word, after which it is no longer listed


class ReplicaStatus(StrEnum):
    PENDING = "PENDING"  # waiting to be launched (a retry gap)
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"  # setup, then the run command, until its first good probe
    READY = "READY"
    NOT_READY = "NOT_READY"  # failed a probe after being READY: out of rotation
    SHUTTING_DOWN = "SHUTTING_DOWN"  # out of rotation, draining, then released
    FAILED = "FAILED"  # its run command exited
    FAILED_INITIAL_DELAY = "FAILED_INITIAL_DELAY"  # never READY within initial_delay_seconds
    FAILED_PROBING = "FAILED_PROBING"  # NOT_READY for too long
    FAILED_PROVISION = "FAILED_PROVISION"  # no placement had capacity
    FAILED_SETUP = "FAILED_SETUP"
    PREEMPTED = "PREEMPTED"

    @property
    def alive(self) -> bool:
        """Counts towards the replicas wanted (launching, serving, or nearly)."""
        return self in _REPLICA_ALIVE

    @property
    def failed(self) -> bool:
        return self.value.startswith("FAILED") or self is ReplicaStatus.PREEMPTED


_REPLICA_ALIVE = {
    ReplicaStatus.PENDING,
    ReplicaStatus.PROVISIONING,
    ReplicaStatus.STARTING,
    ReplicaStatus.READY,
    ReplicaStatus.NOT_READY,
}


class ServiceSpec(BaseModel):
    """One version of a service: what each replica runs, and around it."""

    task: ManagedTask
    # The port each replica serves on (service.ports, else the task's resources.ports).
    port: int
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    policy: ScalePolicy = Field(default_factory=lambda: ScalePolicy.fixed(1))
    load_balancing_policy: str = "least_load"
    # Replicas run on spot nodes (the task's use_spot).
    spot: bool = False

    def problems(self) -> str | None:
        if not 1 <= self.port <= 65535:
            return f"port: expected 1 to 65535, got {self.port}"
        if self.load_balancing_policy not in ("round_robin", "least_load"):
            return (
                f"load_balancing_policy: expected round_robin or least_load, "
                f"got {self.load_balancing_policy!r}"
            )
        top = self.policy.max_replicas if self.policy.max_replicas is not None else 0
        if max(self.policy.min_replicas, top) > MAX_REPLICAS:
            return f"replica_policy: at most {MAX_REPLICAS} replicas"
        if not self.task.candidates:
            return "task.candidates: expected at least one place to run"
        return (
            self.probe.problems()
            or self.task.spec.problems()
            or _candidates_problem(self.task.candidates)
        )


class ReplicaView(BaseModel):
    id: int
    version: int
    status: ReplicaStatus
    cluster: str
    infra: str | None = None
    spot: bool = False
    # host:port the load balancer sends requests to, once known.
    address: str | None = None
    launched_at: datetime | None = None
    # When its run command started (initial_delay_seconds counts from here).
    started_at: datetime | None = None
    ready_at: datetime | None = None
    reason: str | None = None
    handle: ClusterHandle | None = None


class ServiceView(BaseModel):
    name: str
    status: ServiceStatus
    # http://host:port of the load balancer, once it has a port.
    endpoint: str | None = None
    version: int = 1
    # The replicas alive now and the last few that ended (newest last).
    replicas: list[ReplicaView] = Field(default_factory=list)
    target_replicas: int = 0
    qps: float = 0.0
    load_balancing_policy: str = "least_load"
    reason: str | None = None
    started_at: datetime | None = None
    events: list[str] = Field(default_factory=list)


class ServiceState(BaseModel):
    """Everything a service knows; carried whole when it continues as new."""

    view: ServiceView
    # Versions with replicas alive, and the current one (the last).
    versions: dict[int, ServiceSpec] = Field(default_factory=dict)
    update_mode: str = "rolling"
    next_replica_id: int = 1
    replicas: dict[int, ReplicaView] = Field(default_factory=dict)
    # Clusters launched (or being launched) and not yet released, by replica id.
    live: dict[int, ClusterRef] = Field(default_factory=dict)
    # Replicas that ended (newest last, a few kept to show why).
    ended: list[ReplicaView] = Field(default_factory=list)
    # When a NOT_READY replica started failing; when a draining one is released; when
    # a replica may be launched again after a failure.
    failing_since: dict[int, datetime] = Field(default_factory=dict)
    release_at: dict[int, datetime] = Field(default_factory=dict)
    retry_at: datetime | None = None
    # Failures of the current version in a row with none READY (FAILED past a few), and
    # the versions that had a replica READY.
    failures_in_a_row: int = 0
    ready_versions: list[int] = Field(default_factory=list)
    serve_generation: int = 0
    scale: ScaleState | None = None
    # The load balancer's last request counter (it counts from 0 again after a restart).
    requests_seen: int = 0
    lb_host: str | None = None
    lb_port: int | None = None
    observed: list[Observation] = Field(default_factory=list)
    down_requested: bool = False


class ServiceInput(BaseModel):
    name: str
    spec: ServiceSpec
    user: str = ""
    # How often the load balancer's request count comes back when autoscaling (and when
    # not: only to show QPS).
    report_seconds: float = 5.0
    idle_report_seconds: float = 30.0
    # A replica is released this long after it leaves the rotation (in-flight requests).
    drain_seconds: float = 2.0
    # Between launches of a replica after its version failed (doubling, capped).
    retry_launch_seconds: float = 5.0
    # Consecutive failures of a version (none READY) before the service is FAILED.
    max_failures: int = 3
    check_every_seconds: float = 1800.0
    continue_after_events: int | None = None
    carried: ServiceState | None = None

    def problems(self, workflow_id: str | None = None) -> str | None:
        problem = name_problem(self.name)
        if problem:
            return f"name: {problem}"
        if workflow_id is not None and workflow_id != service_workflow_id(self.name):
            return f"workflow id {workflow_id!r}: expected {service_workflow_id(self.name)!r}"
        for what in ("report_seconds", "idle_report_seconds", "retry_launch_seconds"):
            if not 1 <= getattr(self, what) <= 3600:
                return f"{what}: expected 1 to 3600"
        if not 0 <= self.drain_seconds <= 600:
            return "drain_seconds: expected 0 to 600"
        if self.max_failures < 1:
            return "max_failures: expected at least 1"
        timing = _timing_problem(self.check_every_seconds, None, self.continue_after_events)
        if timing:
            return timing
        problem = self.spec.problems()
        return f"spec.{problem}" if problem else None


class UpdateServiceInput(BaseModel):
    spec: ServiceSpec
    mode: str = "rolling"

    def problems(self) -> str | None:
        if self.mode not in ("rolling", "blue_green"):
            return f"mode: expected rolling or blue_green, got {self.mode!r}"
        problem = self.spec.problems()
        return f"spec.{problem}" if problem else None


class UpdateServiceResult(BaseModel):
    version: int


class DownServiceInput(BaseModel):
    pass
