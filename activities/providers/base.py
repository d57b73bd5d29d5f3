"""The provider interface: what every infra (local, ssh, aws, gcp, azure, kubernetes) does.

Contract of every method:
- idempotent: it may run twice after a worker crash, so find by name/tags before create;
- fast to return: no long blocking waits; the workflow polls or the activity heartbeats;
- `terminate` succeeds when the nodes are already gone.
Failures are raised as typed errors from `skyloom.activities.errors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from skyloom.activities.models import (
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    ProvisionInput,
    WatchedObservation,
)
from skyloom.activities.runners import Runner


@dataclass
class CheckResult:
    infra: str
    enabled: bool
    reason: str = ""
    # Per-target detail (e.g. each host of an SSH pool): "name: ok" / "name: why not".
    details: list[str] = field(default_factory=list)


class Provider(ABC):
    """Turns a cluster name into nodes and back. Capabilities beyond these are opt-in."""

    name: str

    @abstractmethod
    def launch(self, req: ProvisionInput) -> ClusterHandle:
        """Nodes for the cluster, creating only those that do not exist yet."""

    @abstractmethod
    def terminate(self, ref: ClusterRef) -> None:
        """Release every node of the cluster, including any a crashed launch created before
        it returned a handle (ref.handle may be None); no error when nothing is left."""

    @abstractmethod
    def runner(self, node: NodeInfo) -> Runner:
        """How to run commands on one node."""

    def stop(self, handle: ClusterHandle) -> None:
        """Stop the nodes, keeping their disks (default: stop every job on them)."""
        for node in handle.nodes:
            self.runner(node).run(KILL_ALL_JOBS.format(root=node.root), timeout=30)

    def start(self, handle: ClusterHandle) -> ClusterHandle:
        """Bring stopped nodes back; returns the handle (addresses may change)."""
        return handle

    def node_states(self, handle: ClusterHandle) -> list[str]:
        """Per rank, from the provider: `up`, `preempted` or `gone` (one call per cluster;
        providers that cannot tell say `up`, and their nodes' processes are watched)."""
        return ["up" for _ in handle.nodes]

    def scan(self) -> list[WatchedObservation] | None:
        """Every watched phase and preempted node this provider has, in one sweep per
        provider/region and one look per host; None when it cannot be swept."""
        return None

    def preempt(self, cluster: str) -> None:
        """Make the cluster's nodes behave as preempted spot instances (for `debug preempt`)."""
        raise NotImplementedError(f"the {self.name} infra cannot simulate a preemption")

    def check(self) -> list[CheckResult]:
        """Whether this infra can be used from here, one result per usable target."""
        return [CheckResult(self.name, True)]


# Kills every job process group recorded under a node's job directories.
KILL_ALL_JOBS = (
    'for p in {root}/jobs/*/*/pid; do [ -f "$p" ] && kill -KILL -- "-$(cat "$p")" 2>/dev/null; '
    "done; true"
)
