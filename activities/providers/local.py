"""The local infra: a node is a directory on this machine; jobs are local processes.

This is the embedded default, so a fresh machine can run everything with no cloud.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from skyloom.activities.errors import ErrorKind, provider_error
from skyloom.activities.models import ClusterHandle, ClusterRef, NodeInfo, ProvisionInput
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
