"""The provider interface: what every infra (local, ssh, aws, gcp, azure, kubernetes) does.

A provider speaks in offers and owners. `offers` says where it could place nodes for a
candidate's resources and at what price (a pure question: no side effect); `create`
makes the nodes of one placement for one owner (the cluster's unique mark, written as a
tag/label/claim on everything created) and returns as soon as they exist; `describe`
says how they are (pending, up, preempted, gone), so the workflow waits by polling, not
by holding a thread; `terminate` removes everything the owner has.

Contract of every method:
- idempotent: it may run twice after a worker crash, so find by owner before create;
- fast to return: no long blocking waits; the workflow polls or the activity heartbeats;
- `terminate` succeeds when the nodes are already gone;
- failures are typed errors from `skyloom.activities.errors`, with the place (infra,
  region, zone, instance type) and the input field they are about as data.

Everything beyond that is an opt-in capability (`capabilities`), checked before use:
stop/start, open ports, spot, multi-node, the watcher's sweep, simulated preemption.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from skyloom.activities.errors import ErrorKind, Where, provider_error
from skyloom.activities.models import (
    Capability,
    CheckResult,
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    NodeState,
    Offer,
    ProvisionInput,
    WatchedObservation,
)
from skyloom.activities.runners import Runner
from skyloom.spec.names import name_problem


class Provider(ABC):
    """Turns an owner's request into nodes and back."""

    name: str
    capabilities: frozenset[Capability] = frozenset()
    # Least seconds between two sweeps of a watch key (the worker's own pace if higher).
    watch_interval: float = 0.0
    # Places nodes by priced catalog offers (a cloud): a task with no infra runs on the
    # cheapest of these, or on the local machine when the worker has none.
    priced: bool = False

    # -- the core: every provider

    @abstractmethod
    def offers(self, infra: str, resources: dict[str, Any], num_nodes: int) -> list[Offer]:
        """Where `num_nodes` nodes meeting `resources` could be placed, cheapest first.
        An empty list means none fits now; a request that can never fit here (unknown
        pool, more nodes than the infra has) raises INVALID_SPEC naming the field."""

    @abstractmethod
    def create(self, req: ProvisionInput) -> ClusterHandle:
        """The owner's nodes at req.offer's place, creating only those that do not exist
        yet (found by owner). Returns once they exist; nodes may still be PENDING."""

    def describe(self, handle: ClusterHandle) -> list[NodeState]:
        """Per rank, how the provider sees each node now (one call per cluster)."""
        return [NodeState.UP for _ in handle.nodes]

    def describe_nodes(self, handle: ClusterHandle) -> list[NodeInfo]:
        """The nodes as they are now: their state, and on a cloud the address a booting
        node got since it was created (one call per cluster)."""
        states = self.describe(handle)
        return [
            n.model_copy(update={"state": s}) for n, s in zip(handle.nodes, states, strict=True)
        ]

    @abstractmethod
    def terminate(self, ref: ClusterRef) -> None:
        """Release everything the owner has, including what a crashed create made before
        it returned a handle (ref.handle may be None); no error when nothing is left."""

    @abstractmethod
    def runner(self, node: NodeInfo) -> Runner:
        """How to run commands on one node."""

    def check(self) -> list[CheckResult]:
        """Whether this infra can be used from here, one result per usable target."""
        return [CheckResult(infra=self.name, enabled=True, capabilities=sorted(self.capabilities))]

    # -- opt-in capabilities

    def require(self, capability: Capability, what: str) -> None:
        if capability not in self.capabilities:
            raise provider_error(
                ErrorKind.NOT_SUPPORTED,
                f"the {self.name} infra cannot {what}",
                where=Where(infra=self.name),
            )

    def stop(self, handle: ClusterHandle) -> None:
        """Stop the nodes, keeping their disks (Capability.STOP)."""
        self.require(Capability.STOP, "stop nodes")

    def start(self, handle: ClusterHandle) -> ClusterHandle:
        """Bring stopped nodes back; returns the handle (addresses may change)."""
        self.require(Capability.STOP, "start stopped nodes")
        return handle

    def open_ports(self, handle: ClusterHandle, ports: list[str]) -> None:
        """Make ports reachable on every node (Capability.OPEN_PORTS)."""
        self.require(Capability.OPEN_PORTS, "open ports")

    def watch_keys(self) -> list[str]:
        """One watcher runs per key, whatever the number of workers: the provider, or
        one per region for clouds (each key swept in one batched call)."""
        return [self.name] if Capability.WATCH in self.capabilities else []

    def sweep(self, key: str) -> list[WatchedObservation]:
        """Every watched phase that ended and every preempted node under `key`, in one
        sweep (Capability.WATCH). A transient failure raises: it must never look like
        an ending or a preemption."""
        self.require(Capability.WATCH, "be swept")
        return []

    def preempt(self, cluster: str) -> None:
        """Make the cluster's nodes behave as preempted spot instances (debug)."""
        self.require(Capability.SIMULATE_PREEMPTION, "simulate a preemption")

    def close(self) -> None:  # noqa: B027 - most providers hold nothing open
        """Release what the provider holds open (connections, watch channels)."""


def safe_name(name: str, what: str = "cluster") -> str:
    """A name checked before it is joined into a path, a tag or a command: providers never
    trust that a workflow checked it."""
    problem = name_problem(name)
    if problem is not None:
        raise provider_error(ErrorKind.INVALID_SPEC, f"{what} name {problem}")
    return name


_UNITS = {"": 1.0, "k": 2**-20, "m": 2**-10, "g": 1.0, "t": 2**10, "p": 2**20}


def min_amount(value: object) -> float | None:
    """The least a `cpus`/`memory` value asks for: 4 → 4, '4+' → 4, '32GB' → 32 (memory in
    GB), None → None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().rstrip("+").strip().lower().removesuffix("b")
    unit = text[-1] if text and text[-1] in "kmgtp" else ""
    try:
        return float(text.removesuffix(unit)) * _UNITS[unit]
    except ValueError:
        return None


def base_infra(infra: str) -> str:
    """`ssh/lab` → `ssh`, `aws/us-east-1` → `aws`: the provider an infra string names."""
    return infra.split("/", 1)[0].lower()


# Kills every job process group recorded under a node's job directories.
KILL_ALL_JOBS = (
    'for p in {root}/jobs/*/*/pid; do [ -f "$p" ] && kill -KILL -- "-$(cat "$p")" 2>/dev/null; '
    "done; true"
)
