"""Inputs and results of every activity: the contract between workflows and side effects.

Plain pydantic models with no I/O, so workflow code can import them inside the sandbox.
Fields may be added later; never repurpose one (recorded histories carry them).

Activities are named once, here (`Activity` refs): the worker registers each
implementation under its ref's name and workflows call it through the same ref, so the
argument and result types are checked on both sides without workflows importing
activity code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

I = TypeVar("I")  # noqa: E741 - input of an activity
O = TypeVar("O")  # noqa: E741 - result of an activity


@dataclass(frozen=True)
class Activity(Generic[I, O]):
    """An activity's name with its input and result types (a typed seam)."""

    name: str
    result: Any = None


# ---- states and capabilities ------------------------------------------------------------


class NodeState(StrEnum):
    """A node as its provider reports it."""

    PENDING = "pending"  # created, not yet reachable (a cloud VM booting)
    UP = "up"
    STOPPED = "stopped"
    PREEMPTED = "preempted"  # taken back by the provider (spot)
    GONE = "gone"  # no longer exists


class PhaseState(StrEnum):
    """One phase (setup or run) of one job on one node, as the node shows it."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"  # with an exit code
    KILLED = "killed"  # its process vanished without an exit code
    UNREACHABLE = "unreachable"  # its node could not be reached for longer than allowed


class Capability(StrEnum):
    """What a provider can do beyond create/describe/terminate; checked before use."""

    STOP = "stop"  # stop nodes keeping their disks, start them again
    OPEN_PORTS = "open_ports"  # make `resources.ports` reachable (firewall, security group)
    SPOT = "spot"  # preemptible nodes (use_spot)
    MULTI_NODE = "multi_node"  # more than one node per cluster
    WATCH = "watch"  # every watched phase swept in one call per watch key
    SIMULATE_PREEMPTION = "simulate_preemption"  # `skyloom debug preempt`


# ---- nodes and clusters ------------------------------------------------------------------


class NodeInfo(BaseModel):
    """One node of a cluster and how to reach it."""

    rank: int
    node_id: str
    ip: str = "127.0.0.1"
    # Where skyloom keeps this node's job directories and the synced workdir.
    root: str
    # SSH nodes only; the local runner ignores them.
    ssh_user: str | None = None
    ssh_port: int = 22
    identity_file: str | None = None
    gpus: dict[str, int] = Field(default_factory=dict)
    state: NodeState = NodeState.UP
    # Ports the task asked for that listen elsewhere on this node (the local infra maps
    # each to a free port of the machine); a port not here is itself.
    ports: dict[int, int] = Field(default_factory=dict)


class ClusterHandle(BaseModel):
    """Everything needed to reach a provisioned cluster's nodes."""

    cluster: str
    infra: str
    nodes: list[NodeInfo]
    # The provider's mark on these nodes (ProvisionInput.owner).
    owner: str = ""
    # Where the nodes are (clouds) and what they are; None where it does not apply.
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    spot: bool = False
    # What the provider can do with these nodes (stop/start, ports, ...).
    capabilities: list[Capability] = Field(default_factory=list)

    @property
    def head(self) -> NodeInfo:
        return self.nodes[0]

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


# A candidate with no infra (or `*`, `*/region`): the cheapest enabled cloud, or the
# local machine on a worker with no cloud enabled.
ANY_INFRA = "*"


class Candidate(BaseModel):
    """One place the task may run: an entry of any_of/ordered, or the resources."""

    infra: str
    resources: dict[str, Any] = Field(default_factory=dict)


class Offer(BaseModel):
    """What a provider can give for a candidate, at one place, per node."""

    infra: str  # the candidate's infra at this offer's precision: "local", "ssh/lab", "aws"
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    cpus: float | None = None
    memory_gb: float | None = None
    accelerators: dict[str, float] = Field(default_factory=dict)
    spot: bool = False
    # Per node; local and SSH hosts cost nothing.
    price_per_hour: float = 0.0
    # Most nodes this offer can give one cluster (a pool's size, the local limit).
    max_nodes: int | None = None
    capabilities: list[Capability] = Field(default_factory=list)

    @property
    def where(self) -> str:
        """`aws/us-east-1/us-east-1a`, `ssh/lab`, `local`: the offer as an infra string."""
        return "/".join(p for p in (self.infra, self.region, self.zone) if p)


class Placement(BaseModel):
    """One place a launch will try: an offer of one of the candidates."""

    candidate: int
    offer: Offer


class PlanInput(BaseModel):
    cluster: str
    num_nodes: int
    candidates: list[Candidate]


class CandidatePlan(BaseModel):
    """A candidate's offers, or why it can never be placed (kind, field, message)."""

    candidate: int
    infra: str
    offers: list[Offer] = Field(default_factory=list)
    error_kind: str | None = None
    error_field: str | None = None
    error: str | None = None


class PlanResult(BaseModel):
    candidates: list[CandidatePlan]


class LaunchAttempt(BaseModel):
    """One placement tried during a launch and why it did not give nodes (a row of the
    failover table users see)."""

    infra: str
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    kind: str
    message: str


class ProvisionInput(BaseModel):
    cluster: str
    infra: str
    num_nodes: int
    # Unique to this cluster's life (a new cluster of the same name gets another): what
    # a provider marks its nodes with, so leftovers of an old cluster are never adopted.
    owner: str = ""
    resources: dict[str, Any] = Field(default_factory=dict)
    # The offer being tried (region, zone, instance type); None: the provider chooses.
    offer: Offer | None = None


class ClusterRef(BaseModel):
    """Names a cluster for stop/start/terminate; the handle when one exists."""

    cluster: str
    infra: str
    handle: ClusterHandle | None = None
    owner: str = ""


# ---- jobs on nodes -----------------------------------------------------------------------


class Phase(StrEnum):
    SETUP = "setup"
    RUN = "run"


class PhaseInput(BaseModel):
    """Start one phase (setup or run) of one job on every node of the cluster."""

    handle: ClusterHandle
    job_id: int
    phase: Phase
    command: str = ""
    # Non-secret environment; secrets travel separately so they are never echoed.
    envs: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    num_nodes: int = 1
    task_id: str = ""
    num_gpus_per_node: float = 0
    # Unused since phases are watched (kept: recorded histories carry it).
    poll_seconds: float = 1.0
    # Workflow the watcher tells when the phase ends on a node.
    notify: str | None = None


class Observation(BaseModel):
    """A change the watcher saw on a node, addressed to the workflow watching it: a phase
    that ended there (`exited`/`killed`/`unreachable`; job_id and phase set), or the node
    itself `preempted` (job_id and phase None)."""

    cluster: str
    rank: int
    state: str
    job_id: int | None = None
    phase: Phase | None = None
    exit_code: int | None = None
    # Why, in words, where the state alone does not say (which host, since when).
    reason: str | None = None
    # The owner of the cluster whose phase this is (ClusterHandle.owner): a new cluster of
    # the same name has another, so an old ending is never taken for a new one's.
    owner: str | None = None

    @property
    def key(self) -> tuple[str, int, int | None, str | None]:
        return (self.cluster, self.rank, self.job_id, self.phase.value if self.phase else None)


# The signal every watched workflow takes, with a list[Observation]: what the watcher saw.
OBSERVE_SIGNAL = "observe"
# The query that describes a cluster or a managed job (its nodes, under "handle").
DESCRIBE = "describe"


class WatchedObservation(BaseModel):
    workflow_id: str
    observation: Observation


class ObserveInput(BaseModel):
    """One-shot look at a cluster's nodes and one phase on them (the safety net when no
    watcher has reported for a long time, and the check after a killed phase)."""

    ref: ClusterRef
    job_id: int
    phase: Phase


class SaveLogsInput(BaseModel):
    """Copy a job's logs off its nodes before they go (managed jobs outlive clusters)."""

    handle: ClusterHandle
    job_id: int
    # Where under the worker's job-log directory: `<managed job id>/<attempt>`.
    dest: str


class KillInput(BaseModel):
    handle: ClusterHandle
    job_id: int


class SyncInput(BaseModel):
    """Copy the workdir and local file mounts to every node."""

    handle: ClusterHandle
    job_id: int
    workdir: str | None = None
    # remote path → local source path
    file_mounts: dict[str, str] = Field(default_factory=dict)


# ---- what only workers can do for a client -----------------------------------------------


class WatchInput(BaseModel):
    """One watcher: every watched phase of one provider (one region, for clouds)."""

    key: str


class LogsInput(BaseModel):
    """Read one node's log of one phase from an offset: a live cluster's (named by its
    workflow: the worker asks that workflow for the nodes, never trusting a client with
    hosts, users or keys), or the copy kept on the worker when a managed job's cluster
    went away (saved)."""

    # The cluster's workflow id (`cluster-<name>`, or `job-<id>` for a managed job's
    # current cluster), and which cluster the reader follows: when the workflow's
    # nodes are another cluster's by now (a managed job moved on), nothing is read.
    workflow_id: str | None = None
    cluster: str | None = None
    job_id: int = 1
    rank: int = 0
    phase: Phase = Phase.RUN
    # `<managed job id>/<attempt>` under the worker's job-log directory.
    saved: str | None = None
    offset: int = 0
    # At most this many bytes per read (base64 in a payload: well under its 2 MB limit).
    max_bytes: int = 1 << 20
    # Wait up to this long for the log to grow past offset (a follower's long poll).
    wait_seconds: float = 0.0


class LogChunk(BaseModel):
    """Bytes of a log. `log_data` (base64) is sealed by the payload codec like secrets:
    a job's output may hold anything, and it passes through workflow history."""

    log_data: str = ""
    offset: int = 0
    # More bytes were already there than max_bytes allowed.
    more: bool = False

    @classmethod
    def of(cls, data: bytes, offset: int, more: bool = False) -> LogChunk:
        return cls(log_data=base64.b64encode(data).decode(), offset=offset, more=more)

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.log_data)


class SavedLogsInput(BaseModel):
    managed_job_id: int


class SavedLogs(BaseModel):
    """Attempts of a managed job whose logs the worker kept: `<attempt>` → phases found."""

    attempts: list[int] = Field(default_factory=list)


class CheckResult(BaseModel):
    infra: str
    enabled: bool
    reason: str = ""
    # Per-target detail (e.g. each host of an SSH pool): "name: ok" / "name: why not".
    details: list[str] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default_factory=list)


class CheckInput(BaseModel):
    pass


class CheckReport(BaseModel):
    worker: str
    results: list[CheckResult]


class ShowGpusInput(BaseModel):
    """`show-gpus [NAME[:COUNT]] [--infra CLOUD[/REGION]] [--all-regions]`."""

    name: str | None = None
    count: float | None = None
    infra: str | None = None
    all_regions: bool = False


class GpuOffer(BaseModel):
    """`count` of `accelerator` on `instance_type` (None: a GCP GPU that attaches to an
    N1 host, priced alone) at `infra` (cloud/region), per hour."""

    accelerator: str
    count: float
    infra: str
    instance_type: str | None
    vcpus: float | None
    memory_gb: float | None
    price_per_hour: float | None
    spot_price_per_hour: float | None
    # Whether the worker that answered can launch on this cloud.
    enabled: bool


class GpuReport(BaseModel):
    rows: list[GpuOffer]
    # Every accelerator the catalog knows (for "did you mean").
    known: list[str]
    enabled: list[str]
    # Per cloud: the catalog's source and date (its `#` lines).
    about: dict[str, list[str]]


class RefreshCatalogInput(BaseModel):
    """`catalog refresh [--cloud C ...]`: none means every cloud enabled on the worker."""

    clouds: list[str] = Field(default_factory=list)


class CatalogRefreshed(BaseModel):
    """One cloud's refresh: what was written, or why nothing was (the old copy stays)."""

    cloud: str
    rows: int = 0
    regions: list[str] = Field(default_factory=list)
    path: str | None = None
    error: str | None = None


class RefreshCatalogReport(BaseModel):
    worker: str
    results: list[CatalogRefreshed]


class PreemptInput(BaseModel):
    cluster: str
    infra: str = "local"


# ---- paths on nodes ----------------------------------------------------------------------


# ---- serving ----------------------------------------------------------------------------


class ProbeSpec(BaseModel):
    """How a replica is asked whether it is ready (SkyServe's readiness_probe)."""

    path: str = "/"
    # POSTed as JSON when set; GET otherwise.
    post_data: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    # A replica not READY this long after its run command started has failed.
    initial_delay_seconds: float = 1200.0
    timeout_seconds: float = 15.0
    # Between two probes of one replica. SkyServe probes every 10 s; a replica that fails
    # must leave the rotation within 2 s here.
    interval_seconds: float = 1.0
    # A READY replica that keeps failing its probe this long is replaced.
    failure_timeout_seconds: float = 3.0

    def problems(self) -> str | None:
        if not self.path.startswith("/") or any(c.isspace() for c in self.path):
            return f"probe.path: expected a URL path starting with /, got {self.path!r}"
        for key, value in self.headers.items():
            if not key or any(c in "\r\n:" for c in key) or any(c in "\r\n" for c in value):
                return f"probe.headers: {key!r} is not a valid header"
        for what in ("initial_delay_seconds", "timeout_seconds", "failure_timeout_seconds"):
            if not getattr(self, what) >= 0:
                return f"probe.{what}: expected a non-negative number"
        if not 0.1 <= self.interval_seconds <= 600:
            return "probe.interval_seconds: expected 0.1 to 600"
        return None


class ProbeTarget(BaseModel):
    """One replica the serving loop probes."""

    id: int
    address: str  # host:port
    # In the rotation as far as the workflow knows (READY).
    ready: bool
    probe: ProbeSpec = Field(default_factory=ProbeSpec)


class ServeInput(BaseModel):
    """Probe a service's replicas and keep its load balancer's upstreams to the READY ones,
    until a replica's readiness changes or `report_seconds` pass."""

    service: str
    # The load balancer's port for the service (None: the first call picks one).
    lb_port: int | None = None
    policy: str = "least_load"
    # Replicas to probe; one not listed (draining, gone) takes no more traffic.
    replicas: list[ProbeTarget] = Field(default_factory=list)
    report_seconds: float = 5.0
    # Grows with each call for the service: a loop that a newer one replaced stops
    # touching the load balancer at once, before its cancellation reaches it.
    generation: int = 0


class ReplicaProbe(BaseModel):
    id: int
    ready: bool
    # Why the probe failed (status, timeout, refused), for the replica's reason.
    error: str | None = None


class ServeReport(BaseModel):
    lb_host: str
    lb_port: int
    # Replicas whose readiness is not what the input said.
    changes: list[ReplicaProbe] = Field(default_factory=list)
    # The load balancer's request counter for the service (from 0 after its restart).
    requests: int = 0


class ServiceRef(BaseModel):
    service: str


def job_dir(node: NodeInfo, job_id: int) -> str:
    return f"{node.root}/jobs/{job_id}"


def log_path(node: NodeInfo, job_id: int, phase: Phase) -> str:
    return f"{job_dir(node, job_id)}/{phase.value}/log"


def workdir_path(node: NodeInfo) -> str:
    return f"{node.root}/sky_workdir"


# ---- the activities ------------------------------------------------------------------------

PLAN_LAUNCH: Activity[PlanInput, PlanResult] = Activity("plan_launch", PlanResult)
PROVISION: Activity[ProvisionInput, ClusterHandle] = Activity("provision_nodes", ClusterHandle)
DESCRIBE_NODES: Activity[ClusterRef, ClusterHandle] = Activity("describe_nodes", ClusterHandle)
SYNC_FILES: Activity[SyncInput, None] = Activity("sync_files")
START_PHASE: Activity[PhaseInput, None] = Activity("start_phase")
KILL_JOB: Activity[KillInput, None] = Activity("kill_job")
OBSERVE_CLUSTER: Activity[ObserveInput, list[Observation]] = Activity(
    "observe_cluster", list[Observation]
)
SAVE_LOGS: Activity[SaveLogsInput, None] = Activity("save_logs")
STOP_NODES: Activity[ClusterRef, None] = Activity("stop_nodes")
START_NODES: Activity[ClusterRef, ClusterHandle] = Activity("start_nodes", ClusterHandle)
TERMINATE_NODES: Activity[ClusterRef, None] = Activity("terminate_nodes")
WATCH_PROVIDER: Activity[WatchInput, None] = Activity("watch_provider")
READ_LOGS: Activity[LogsInput, LogChunk] = Activity("read_logs", LogChunk)
SAVED_LOGS: Activity[SavedLogsInput, SavedLogs] = Activity("saved_logs", SavedLogs)
CHECK_INFRA: Activity[CheckInput, CheckReport] = Activity("check_infra", CheckReport)
PREEMPT_CLUSTER: Activity[PreemptInput, None] = Activity("preempt_cluster")
SHOW_GPUS: Activity[ShowGpusInput, GpuReport] = Activity("show_gpus", GpuReport)
REFRESH_CATALOG: Activity[RefreshCatalogInput, RefreshCatalogReport] = Activity(
    "refresh_catalog", RefreshCatalogReport
)
SERVE_REPLICAS: Activity[ServeInput, ServeReport] = Activity("serve_replicas", ServeReport)
REMOVE_LOAD_BALANCER: Activity[ServiceRef, None] = Activity("remove_load_balancer")
