"""The local infra: a node is a directory on this machine; jobs are local processes.

This is the embedded default, so a fresh machine can run everything with no cloud.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

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
        watched phase (a few stats each) and every preempted node."""
        out: list[WatchedObservation] = []
        if not self.root.exists():
            return out
        for cdir in _dirs(self.root):
            for ndir in _dirs(cdir):
                if not ndir.name.startswith("node-"):
                    continue
                rank = int(ndir.name.split("-", 1)[1])
                preempted = _preempted(ndir)
                told: set[str] = set()
                for jdir in _dirs(ndir / "jobs"):
                    for pdir in _dirs(jdir):
                        try:
                            wid = (pdir / "watch").read_text().split("\n", 1)[0].strip()
                        except (FileNotFoundError, NotADirectoryError):
                            continue
                        if preempted and wid not in told:
                            told.add(wid)
                            obs = Observation(cluster=cdir.name, rank=rank, state="preempted")
                            out.append(WatchedObservation(workflow_id=wid, observation=obs))
                        ended = _phase_end(pdir)
                        if ended is not None and pdir.name in (Phase.SETUP, Phase.RUN):
                            state, code = ended
                            obs = Observation(
                                cluster=cdir.name,
                                rank=rank,
                                state=state,
                                job_id=int(jdir.name),
                                phase=Phase(pdir.name),
                                exit_code=code,
                            )
                            out.append(WatchedObservation(workflow_id=wid, observation=obs))
        return out


def _dirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _preempted(node: Path) -> bool:
    return (node / "preempted").exists()


def _phase_end(pdir: Path) -> tuple[str, int | None] | None:
    """('exited', code) or ('killed', None) for a phase that ended; None while it runs."""
    try:
        return "exited", int((pdir / "exit_code").read_text())
    except (FileNotFoundError, ValueError):
        pass
    try:
        pid = int((pdir / "pid").read_text())
    except (FileNotFoundError, ValueError):
        return None  # not started yet
    try:
        os.kill(pid, 0)
        return None
    except ProcessLookupError:
        pass
    except PermissionError:
        return None
    # Dead without an exit code, unless it wrote one between our two looks.
    try:
        return "exited", int((pdir / "exit_code").read_text())
    except (FileNotFoundError, ValueError):
        return "killed", None
