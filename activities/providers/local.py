"""The local infra: a node is a directory on this machine; jobs are local processes.

This is the embedded default, so a fresh machine can run everything with no cloud.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from skyloom.activities.errors import ErrorKind, Where, provider_error
from skyloom.activities.models import (
    Capability,
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    NodeState,
    Observation,
    Offer,
    Phase,
    PhaseState,
    ProvisionInput,
    WatchedObservation,
)
from skyloom.activities.providers.base import KILL_ALL_JOBS, Provider, min_amount, safe_name
from skyloom.activities.runners import LocalRunner, Runner

# A local node is a process group on this machine: more than this many in one cluster is
# a typo (`--num-nodes 99999`), not a plan.
MAX_NODES = 32
# Ports of a range mapped to free ports of this machine (see _map_ports).
MAX_MAPPED_PORTS = 16

_CAPABILITIES = frozenset(
    {
        Capability.STOP,
        Capability.SPOT,
        Capability.MULTI_NODE,
        Capability.WATCH,
        Capability.SIMULATE_PREEMPTION,
        # Every port of a local node is a port of this machine: nothing to open.
        Capability.OPEN_PORTS,
    }
)


class LocalProvider(Provider):
    name = "local"
    capabilities = _CAPABILITIES

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sweep = _Sweep()

    def _cluster_dir(self, cluster: str) -> Path:
        return self.root / safe_name(cluster)

    def offers(self, infra: str, resources: dict[str, Any], num_nodes: int) -> list[Offer]:
        if infra.lower() != "local":
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"infra {infra!r}: the local infra has no regions or zones; use `local`",
                where=Where(infra=infra, field="resources.infra"),
            )
        if num_nodes > MAX_NODES:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"{num_nodes} nodes asked; the local infra runs at most {MAX_NODES} nodes "
                "per cluster (they are processes on this machine)",
                where=Where(infra=infra, field="num_nodes"),
            )
        cpus, memory = float(os.cpu_count() or 1), _memory_gb()
        short = _shortfall(resources, cpus, memory)
        if short is not None:
            field, why = short
            raise provider_error(ErrorKind.NO_CAPACITY, why, where=Where(infra=infra, field=field))
        return [
            Offer(
                infra="local",
                cpus=cpus,
                memory_gb=memory,
                spot=bool(resources.get("use_spot")),
                max_nodes=MAX_NODES,
                capabilities=sorted(self.capabilities),
            )
        ]

    def create(self, req: ProvisionInput) -> ClusterHandle:
        cdir = self._cluster_dir(req.cluster)
        # What offers refuses, create refuses too: a workflow may launch without offers.
        self.offers(req.infra, req.resources, req.num_nodes)
        owner = req.owner or req.cluster
        if _owner_of(cdir) not in (None, owner):
            # An older cluster of the same name left this behind: it is garbage, never
            # adopted (its finished jobs must not pass for ours).
            self._remove(cdir)
        nodes = []
        for rank in range(req.num_nodes):
            d = cdir / f"node-{rank}"
            d.mkdir(parents=True, exist_ok=True)
            meta = d / "node.json"
            if not meta.exists():
                # The tag file is the idempotency key: a rerun finds the node, never doubles it.
                tags = {"cluster": req.cluster, "rank": rank, "owner": owner}
                tags["ports"] = _map_ports(req.resources.get("ports"))
                meta.write_text(json.dumps(tags))
            ports = json.loads(meta.read_text()).get("ports") or {}
            nodes.append(
                NodeInfo(
                    rank=rank,
                    node_id=f"{req.cluster}-{rank}",
                    root=str(d),
                    ports={int(k): int(v) for k, v in ports.items()},
                )
            )
        return ClusterHandle(
            cluster=req.cluster,
            infra="local",
            nodes=nodes,
            owner=owner,
            spot=bool(req.resources.get("use_spot")),
            capabilities=sorted(self.capabilities),
        )

    def terminate(self, ref: ClusterRef) -> None:
        cdir = self._cluster_dir(ref.cluster)
        if not cdir.exists():
            return
        if ref.owner and _owner_of(cdir) not in (None, ref.owner):
            return  # a newer cluster of the same name: not ours to remove
        self._remove(cdir)

    def _remove(self, cdir: Path) -> None:
        self._kill_all(_nodes_of(cdir))
        shutil.rmtree(cdir, ignore_errors=True)

    def _kill_all(self, nodes: list[NodeInfo]) -> None:
        for node in nodes:
            LocalRunner(node).run(KILL_ALL_JOBS.format(root=shlex.quote(node.root)), timeout=30)

    def stop(self, handle: ClusterHandle) -> None:
        self._kill_all(handle.nodes)

    def start(self, handle: ClusterHandle) -> ClusterHandle:
        return handle

    def open_ports(self, handle: ClusterHandle, ports: list[str]) -> None:
        return None

    def runner(self, node: NodeInfo) -> Runner:
        return LocalRunner(node)

    def describe(self, handle: ClusterHandle) -> list[NodeState]:
        out = []
        for node in handle.nodes:
            root = Path(node.root)
            if not root.exists():
                out.append(NodeState.GONE)
            else:
                out.append(NodeState.PREEMPTED if _preempted(root) else NodeState.UP)
        return out

    def existing_clusters(self) -> list[str]:
        return (
            sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.exists() else []
        )

    # -- spot: preemption and the watcher's sweep

    def preempt(self, cluster: str) -> None:
        """Mark every node preempted (what the provider reports from now on), then kill
        every process on it, as a reclaimed spot instance does."""
        cdir = self._cluster_dir(cluster)
        nodes = _nodes_of(cdir)
        if not nodes:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"no local cluster {cluster!r}",
                where=Where(infra="local", field="cluster"),
            )
        for node in nodes:
            (Path(node.root) / "preempted").write_text("preempted\n")
        self._kill_all(nodes)

    def sweep(self, key: str) -> list[WatchedObservation]:
        """All local nodes live on this one host: one sweep of the directories covers every
        watched phase and every preempted node. The sweep remembers what it read (see
        _Sweep), so a round where nothing changed costs a stat per directory and a
        kill(pid, 0) per running phase."""
        out: list[WatchedObservation] = []
        sweep = self._sweep
        sweep.begin()
        root = str(self.root)
        for cluster in sweep.read(root, _listing).dirs:
            cdir = f"{root}/{cluster}"
            for node in sweep.read(cdir, _listing).dirs:
                if not node.startswith("node-"):
                    continue
                ndir = f"{cdir}/{node}"
                rank = int(node.split("-", 1)[1])
                preempted = "preempted" in sweep.read(ndir, _listing).files
                told: set[str] = set()
                for job in sweep.read(f"{ndir}/jobs", _listing).dirs:
                    jdir = f"{ndir}/jobs/{job}"
                    for phase in sweep.read(jdir, _listing).dirs:
                        pdir = f"{jdir}/{phase}"
                        seen = sweep.last(pdir)
                        if seen is None or (seen.ended is None and not _alive(seen.pid)):
                            # New, changing, or its process is gone: read it (a phase
                            # that ended or still runs cannot have changed meanwhile).
                            seen = sweep.read(pdir, partial(_phase, cluster, rank, job))
                        wid = seen.workflow_id
                        if wid is None:
                            continue
                        if preempted and wid not in told:
                            told.add(wid)
                            obs = Observation(
                                cluster=cluster,
                                rank=rank,
                                state=NodeState.PREEMPTED,
                                owner=seen.owner,
                            )
                            out.append(WatchedObservation(workflow_id=wid, observation=obs))
                        if seen.ended is not None:
                            out.append(seen.ended)
                        elif seen.pid is not None and not _alive(seen.pid):
                            # Exited, if it wrote its code between our two looks; else killed.
                            code = _int(_read(f"{pdir}/exit_code"))
                            state = PhaseState.EXITED if code is not None else PhaseState.KILLED
                            out.append(
                                _report(wid, cluster, rank, job, phase, state, code, seen.owner)
                            )
        sweep.end()
        return out


def _map_ports(asked: Any) -> dict[str, int]:
    """A free port of this machine for each port the task opens: every local node shares
    the machine, so two replicas of a service cannot both listen on 8080. Jobs find theirs
    in NodeInfo.ports (a service replica gets it as SKYLOOM_REPLICA_PORT)."""
    out: dict[str, int] = {}
    for spec in asked or []:
        first, _, last = str(spec).partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            continue
        for port in range(int(first), int(last or first) + 1)[:MAX_MAPPED_PORTS]:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                out[str(port)] = s.getsockname()[1]
    return out


def _nodes_of(cdir: Path) -> list[NodeInfo]:
    nodes = sorted(cdir.glob("node-*"), key=lambda p: int(p.name.split("-", 1)[1]))
    return [NodeInfo(rank=i, node_id=p.name, root=str(p)) for i, p in enumerate(nodes)]


def _owner_of(cdir: Path) -> str | None:
    """The owner recorded on the cluster's first node (None: no node, or none recorded)."""
    try:
        meta = json.loads((cdir / "node-0" / "node.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    owner = meta.get("owner")
    return str(owner) if owner else None


def _memory_gb() -> float:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        return 0.0


def _shortfall(resources: dict[str, Any], cpus: float, memory: float) -> tuple[str, str] | None:
    """(field, why) when one local node can never meet the resources."""
    if resources.get("accelerators"):
        return "resources.accelerators", "the local infra has no accelerators"
    if resources.get("instance_type"):
        return "resources.instance_type", "the local infra has no instance types"
    want = min_amount(resources.get("cpus"))
    if want is not None and want > cpus:
        return "resources.cpus", f"{want:g} CPUs asked; this machine has {cpus:g}"
    want = min_amount(resources.get("memory"))
    if want is not None and memory and want > memory:
        return "resources.memory", f"{want:g} GB of memory asked; this machine has {memory:g} GB"
    return None


# A directory whose mtime is younger than this is read again whatever its mtime says: two
# changes within the file system's timestamp granularity can leave the same mtime.
_RACY_NS = 2_000_000_000

V = TypeVar("V")


class _Sweep:
    """What the watcher's sweep read last round, per directory, keyed by the directory's
    mtime. Every file the nodelet and this provider write (watch, pid, exit_code,
    preempted, node and phase directories) is created or renamed into place, which moves
    the mtime of the directory holding it; so an unchanged mtime means unchanged content."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, Any]] = {}
        self._visited: set[str] = set()
        self._now = 0

    def begin(self) -> None:
        self._visited = set()
        self._now = time.time_ns()

    def read(self, path: str, parse: Callable[[str], V]) -> V:
        self._visited.add(path)
        try:
            mtime = os.stat(path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            mtime = -1
        hit = self._seen.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        value = parse(path)
        if self._now - mtime > _RACY_NS:
            self._seen[path] = (mtime, value)
        else:
            self._seen.pop(path, None)
        return value

    def last(self, path: str) -> Any:
        """What `read` returned for path last time it could be trusted, without a look."""
        self._visited.add(path)
        hit = self._seen.get(path)
        return hit[1] if hit is not None else None

    def end(self) -> None:
        """Forget directories that are gone (their parent no longer lists them)."""
        for path in [p for p in self._seen if p not in self._visited]:
            del self._seen[path]


class _Listing(NamedTuple):
    dirs: list[str]
    files: frozenset[str]


class _PhaseSeen(NamedTuple):
    """A phase directory's files: whom to tell, how it ended if it did, its pid, and the
    owner of the cluster it belongs to."""

    workflow_id: str | None
    ended: WatchedObservation | None
    pid: int | None
    owner: str | None


def _listing(path: str) -> _Listing:
    dirs: list[str] = []
    files: list[str] = []
    try:
        for e in os.scandir(path):
            (dirs if e.is_dir() else files).append(e.name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return _Listing(dirs, frozenset(files))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _phase(cluster: str, rank: int, job: str, pdir: str) -> _PhaseSeen:
    lines = (_read(f"{pdir}/watch") or "").split("\n")
    wid = lines[0].strip()
    owner = lines[3].strip() if len(lines) > 3 and lines[3].strip() not in ("", "-") else None
    phase = pdir.rsplit("/", 1)[1]
    if not wid or phase not in (Phase.SETUP, Phase.RUN):
        return _PhaseSeen(None, None, None, None)
    code = _int(_read(f"{pdir}/exit_code"))
    ended = None
    if code is not None:
        ended = _report(wid, cluster, rank, job, phase, PhaseState.EXITED, code, owner)
    return _PhaseSeen(wid, ended, _int(_read(f"{pdir}/pid")), owner)


def _report(
    wid: str,
    cluster: str,
    rank: int,
    job: str,
    phase: str,
    state: PhaseState,
    code: int | None,
    owner: str | None,
) -> WatchedObservation:
    obs = Observation(
        cluster=cluster,
        rank=rank,
        state=state,
        job_id=int(job),
        phase=Phase(phase),
        exit_code=code,
        owner=owner,
    )
    return WatchedObservation(workflow_id=wid, observation=obs)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _preempted(node: Path) -> bool:
    return (node / "preempted").exists()
