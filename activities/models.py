"""Inputs and results of every activity: the contract between workflows and side effects.

Plain pydantic models with no I/O, so workflow code can import them inside the sandbox.
Fields may be added later; never repurpose one (recorded histories carry them).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


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


class ClusterHandle(BaseModel):
    """Everything needed to reach a provisioned cluster's nodes."""

    cluster: str
    infra: str
    nodes: list[NodeInfo]
    # The provider's mark on these nodes (ProvisionInput.owner).
    owner: str = ""

    @property
    def head(self) -> NodeInfo:
        return self.nodes[0]


class ProvisionInput(BaseModel):
    cluster: str
    infra: str
    num_nodes: int
    # Unique to this cluster's life (a new cluster of the same name gets another): what
    # a provider marks its nodes with, so leftovers of an old cluster are never adopted.
    owner: str = ""
    resources: dict[str, Any] = Field(default_factory=dict)


class ClusterRef(BaseModel):
    """Names a cluster for stop/start/terminate; the handle when one exists."""

    cluster: str
    infra: str
    handle: ClusterHandle | None = None
    owner: str = ""


class Phase(StrEnum):
    SETUP = "setup"
    RUN = "run"


class PhaseInput(BaseModel):
    """Start or watch one phase (setup or run) of one job on every node of the cluster."""

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
    # How often watchers look at the node; tests shorten it.
    poll_seconds: float = 1.0
    # Workflow to tell when the phase ends on a node (the shared watcher does, so the
    # workflow waits with no activity and no timer); None: it runs watch_phase instead.
    notify: str | None = None


class Observation(BaseModel):
    """A change the watcher saw on a node, addressed to the workflow watching it: a phase
    that ended there (`exited`/`killed`), or the node itself `preempted`."""

    cluster: str
    rank: int
    state: str
    job_id: int | None = None
    phase: Phase | None = None
    exit_code: int | None = None

    @property
    def key(self) -> tuple[str, int, int | None, str | None]:
        return (self.cluster, self.rank, self.job_id, self.phase.value if self.phase else None)


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


class PhaseResult(BaseModel):
    """How one phase ended on each node: exit code, or None when it was killed."""

    exit_codes: list[int | None]

    @property
    def succeeded(self) -> bool:
        return all(c == 0 for c in self.exit_codes)

    @property
    def first_failure(self) -> tuple[int, int | None] | None:
        for rank, code in enumerate(self.exit_codes):
            if code != 0:
                return rank, code
        return None


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


def job_dir(node: NodeInfo, job_id: int) -> str:
    return f"{node.root}/jobs/{job_id}"


def log_path(node: NodeInfo, job_id: int, phase: Phase) -> str:
    return f"{job_dir(node, job_id)}/{phase.value}/log"


def workdir_path(node: NodeInfo) -> str:
    return f"{node.root}/sky_workdir"
