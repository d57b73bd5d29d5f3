"""The local infra: a node is a directory on this machine; jobs are local processes.

This is the embedded default, so a fresh machine can run everything with no cloud.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from skyloom.activities.errors import ErrorKind, provider_error
from skyloom.activities.models import (
    ClusterHandle,
    ClusterRef,
    NodeInfo,
    Observation,
    Phase,
    ProvisionInput,
    WatchedObservation,
)
from skyloom.activities.providers.base import Provider
from skyloom.activities.runners import LocalRunner, Runner


class LocalProvider(Provider):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sweep = _Sweep()

    def _cluster_dir(self, cluster: str) -> Path:
        return self.root / cluster

    def launch(self, req: ProvisionInput) -> ClusterHandle:
        if req.resources.get("accelerators"):
            raise provider_error(ErrorKind.NO_CAPACITY, "the local infra has no accelerators")
        nodes = []
        for rank in range(req.num_nodes):
            d = self._cluster_dir(req.cluster) / f"node-{rank}"
            d.mkdir(parents=True, exist_ok=True)
            meta = d / "node.json"
            if not meta.exists():
                # The tag file is the idempotency key: a rerun finds the node, never doubles it.
                meta.write_text(json.dumps({"cluster": req.cluster, "rank": rank}))
            nodes.append(NodeInfo(rank=rank, node_id=f"{req.cluster}-{rank}", root=str(d)))
        return ClusterHandle(cluster=req.cluster, infra="local", nodes=nodes)

    def terminate(self, ref: ClusterRef) -> None:
        cluster = ref.cluster
        d = self._cluster_dir(cluster)
        if not d.exists():
            return
        handle = ClusterHandle(
            cluster=cluster,
            infra="local",
            nodes=[
                NodeInfo(rank=i, node_id=p.name, root=str(p))
                for i, p in enumerate(sorted(d.glob("node-*")))
            ],
        )
        self.stop(handle)
        shutil.rmtree(d, ignore_errors=True)

    def runner(self, node: NodeInfo) -> Runner:
        return LocalRunner(node)

    def existing_clusters(self) -> list[str]:
        return (
            sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.exists() else []
        )

    # -- spot: preemption and the watcher's sweep

    def preempt(self, cluster: str) -> None:
        """Mark every node preempted (what the provider reports from now on), then kill
        every process on it, as a reclaimed spot instance does."""
        d = self._cluster_dir(cluster)
        nodes = sorted(d.glob("node-*")) if d.exists() else []
        if not nodes:
            raise provider_error(ErrorKind.INVALID_SPEC, f"no local cluster {cluster!r}")
        for node in nodes:
            (node / "preempted").write_text("preempted\n")
        self.stop(
            ClusterHandle(
                cluster=cluster,
                infra="local",
                nodes=[NodeInfo(rank=i, node_id=n.name, root=str(n)) for i, n in enumerate(nodes)],
            )
        )

    def node_states(self, handle: ClusterHandle) -> list[str]:
        out = []
        for node in handle.nodes:
            root = Path(node.root)
            out.append("gone" if not root.exists() else "preempted" if _preempted(root) else "up")
        return out

    def scan(self) -> list[WatchedObservation]:
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
                            obs = Observation(cluster=cluster, rank=rank, state="preempted")
                            out.append(WatchedObservation(workflow_id=wid, observation=obs))
                        if seen.ended is not None:
                            out.append(seen.ended)
                        elif seen.pid is not None and not _alive(seen.pid):
                            # Exited, if it wrote its code between our two looks; else killed.
                            code = _int(_read(f"{pdir}/exit_code"))
                            state = "exited" if code is not None else "killed"
                            out.append(_report(wid, cluster, rank, job, phase, state, code))
        sweep.end()
        return out


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
    """A phase directory's files: whom to tell, how it ended if it did, its pid."""

    workflow_id: str | None
    ended: WatchedObservation | None
    pid: int | None


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
    watch = _read(f"{pdir}/watch")
    wid = watch.split("\n", 1)[0].strip() if watch else None
    phase = pdir.rsplit("/", 1)[1]
    if not wid or phase not in (Phase.SETUP, Phase.RUN):
        return _PhaseSeen(None, None, None)
    code = _int(_read(f"{pdir}/exit_code"))
    ended = _report(wid, cluster, rank, job, phase, "exited", code) if code is not None else None
    return _PhaseSeen(wid, ended, _int(_read(f"{pdir}/pid")))


def _report(
    wid: str, cluster: str, rank: int, job: str, phase: str, state: str, code: int | None
) -> WatchedObservation:
    obs = Observation(
        cluster=cluster,
        rank=rank,
        state=state,
        job_id=int(job),
        phase=Phase(phase),
        exit_code=code,
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
