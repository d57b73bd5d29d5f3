"""Cluster activities: provision nodes, sync files, start/watch/kill job phases, stop, down.

Methods on a class holding injected providers: the worker passes real ones, tests pass
fakes. Each method is safe to run twice (a retry after a worker crash).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import TypeVar

from skyloom.activities.errors import ErrorKind, provider_error
from skyloom.activities.models import (
    ClusterHandle,
    ClusterRef,
    KillInput,
    NodeInfo,
    Observation,
    ObserveInput,
    Phase,
    PhaseInput,
    PhaseResult,
    ProvisionInput,
    SaveLogsInput,
    SyncInput,
    job_dir,
    log_path,
    workdir_path,
)
from skyloom.activities.providers.base import Provider
from skyloom.activities.runners import Runner, write_env_file
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

# A phase whose claim exists but that never wrote a pid for this long was lost while
# starting (its starter died between claiming and spawning): report it killed.
_LOST_START_SECONDS = 60.0
# Blocking work runs beside the activity thread, which heartbeats this often meanwhile.
_HEARTBEAT_EVERY = 2.0

T = TypeVar("T")


def _in_parallel(nodes: list[NodeInfo], fn: Callable[[NodeInfo], object]) -> list:
    if len(nodes) == 1:
        return [fn(nodes[0])]
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        return list(pool.map(fn, nodes))


def _heartbeating(fn: Callable[[], T]) -> T:
    """Run fn in a helper thread and heartbeat until it returns (outside an activity: call
    it directly)."""
    if not activity.in_activity():
        return fn()
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(fn)
        while True:
            try:
                return fut.result(timeout=_HEARTBEAT_EVERY)
            except FuturesTimeout:
                activity.heartbeat()


class Providers:
    """Providers by infra name; `ssh/pool` and `aws/us-east-1` resolve by their head."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._by_name = dict(providers)

    def get(self, infra: str) -> Provider:
        name = infra.split("/", 1)[0].lower()
        try:
            return self._by_name[name]
        except KeyError:
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"infra {infra!r} is not enabled on this worker "
                f"(enabled: {', '.join(sorted(self._by_name))})",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._by_name)


def skypilot_env(inp: PhaseInput, node: NodeInfo) -> dict[str, str]:
    """The environment SkyPilot gives a job (or setup) on one node."""
    ips = "\n".join(n.ip for n in inp.handle.nodes[: inp.num_nodes])
    gpus = inp.num_gpus_per_node
    gpus_text = str(int(gpus)) if float(gpus).is_integer() else str(gpus)
    info = {
        "cluster_name": inp.handle.cluster,
        "cloud": inp.handle.infra.split("/")[0],
        "num_nodes": inp.num_nodes,
        "ips": [n.ip for n in inp.handle.nodes[: inp.num_nodes]],
    }
    if inp.phase is Phase.SETUP:
        base = {
            "SKYPILOT_SETUP_NODE_RANK": str(node.rank),
            "SKYPILOT_SETUP_NODE_IPS": ips,
            "SKYPILOT_SETUP_NUM_GPUS_PER_NODE": gpus_text,
        }
    else:
        base = {
            "SKYPILOT_NODE_RANK": str(node.rank),
            "SKYPILOT_NODE_IPS": ips,
            "SKYPILOT_NUM_NODES": str(inp.num_nodes),
            "SKYPILOT_NUM_GPUS_PER_NODE": gpus_text,
        }
    return {
        **base,
        "SKYPILOT_TASK_ID": inp.task_id,
        "SKYPILOT_CLUSTER_INFO": json.dumps(info),
        "SKYLOOM_JOB_ID": str(inp.job_id),
        "SKYLOOM_CWD": workdir_path(node),
    }


def _phase_dir(node: NodeInfo, inp: PhaseInput | KillInput, phase: Phase) -> str:
    return f"{job_dir(node, inp.job_id)}/{phase.value}"


class ClusterActivities:
    def __init__(
        self,
        providers: Providers,
        *,
        sleep: Callable[[float], None] = time.sleep,
        unreachable_grace: float = 60.0,
        logs_dir: Path | None = None,
    ):
        self.providers = providers
        # Where managed jobs' logs are kept once their clusters are gone.
        self.logs_dir = logs_dir
        self._sleep = sleep
        # A node that cannot be reached for this long fails the phase (gone, not slow).
        self.unreachable_grace = unreachable_grace

    def _runner(self, handle: ClusterHandle, node: NodeInfo) -> Runner:
        return self.providers.get(handle.infra).runner(node)

    def _each_node(
        self, handle: ClusterHandle, nodes: list[NodeInfo], fn: Callable[[NodeInfo], object]
    ) -> list:
        """fn on every node at once (one slow host must not serialise the others), while
        this thread heartbeats, so a dead worker's activity is retried within seconds."""
        return _heartbeating(lambda: _in_parallel(nodes, fn))

    @activity.defn(name="provision_nodes")
    def provision(self, inp: ProvisionInput) -> ClusterHandle:
        return _heartbeating(lambda: self.providers.get(inp.infra).launch(inp))

    @activity.defn(name="sync_files")
    def sync_files(self, inp: SyncInput) -> None:
        def sync(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            # Without a workdir the job still runs in an (empty) one: the nodelet makes it.
            if inp.workdir:
                runner.sync_dir(inp.workdir, workdir_path(node))
            for target, source in inp.file_mounts.items():
                runner.sync_dir(source, target)

        self._each_node(inp.handle, inp.handle.nodes, sync)

    @activity.defn(name="start_phase")
    def start_phase(self, inp: PhaseInput) -> None:
        """Write the phase's files and start it detached on each node (once per node)."""

        def start(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            d = _phase_dir(node, inp, inp.phase)
            env = {**inp.envs, **inp.secrets, **skypilot_env(inp, node)}
            # Rewriting cmd.sh/env before the claim is harmless: the claim decides who runs.
            files = {
                f"{d}/cmd.sh": (inp.command + "\n", 0o700),
                f"{d}/env": (write_env_file(env), 0o600),
            }
            if inp.notify:
                # The shared watcher tells this workflow when the phase ends here.
                # Line 1: whom to tell; then which cluster and rank this node is to it.
                watch = f"{inp.notify}\n{inp.handle.cluster}\n{node.rank}\n"
                files[f"{d}/watch"] = (watch, 0o644)
            runner.nodelet("start", d, files)

        self._each_node(inp.handle, inp.handle.nodes[: inp.num_nodes], start)

    @activity.defn(name="watch_phase")
    def watch_phase(self, inp: PhaseInput) -> PhaseResult:
        """Wait until the phase ended on every node; heartbeats while it runs.

        When one rank fails the others are killed (a distributed job cannot go on without
        a rank), so the result comes back as soon as the failure is known.
        """
        nodes = inp.handle.nodes[: inp.num_nodes]
        codes: list[int | None] = [None] * len(nodes)
        done = [False] * len(nodes)
        first_seen_starting: dict[int, float] = {}
        first_unreachable: dict[int, float] = {}
        killed_others = False

        def look(node: NodeInfo) -> str:
            try:
                return self._runner(inp.handle, node).nodelet(
                    "status", _phase_dir(node, inp, inp.phase)
                )
            except ApplicationError as e:
                if e.type != ErrorKind.UNREACHABLE.value:
                    raise
                return f"unreachable {e.message}"

        while True:
            if activity.is_cancelled():
                raise CancelledError("watch cancelled")

            pending = [n for n in nodes if not done[n.rank]]
            for node, state in zip(
                pending, self._each_node(inp.handle, pending, look), strict=True
            ):
                word, _, rest = state.partition(" ")
                if word == "unreachable":
                    since = first_unreachable.setdefault(node.rank, time.monotonic())
                    if time.monotonic() - since > self.unreachable_grace:
                        raise provider_error(
                            ErrorKind.UNREACHABLE,
                            f"node {node.rank} ({node.ip}) unreachable for more than "
                            f"{self.unreachable_grace:.0f}s during {inp.phase.value}: "
                            f"{rest}",
                            non_retryable=True,
                        )
                    continue
                first_unreachable.pop(node.rank, None)
                if word == "exited":
                    codes[node.rank], done[node.rank] = int(rest), True
                elif word == "killed":
                    codes[node.rank], done[node.rank] = None, True
                elif word in ("starting", "pending"):
                    since = first_seen_starting.setdefault(node.rank, time.monotonic())
                    if time.monotonic() - since > _LOST_START_SECONDS:
                        codes[node.rank], done[node.rank] = None, True
            if all(done):
                return PhaseResult(exit_codes=codes)
            failed = any(d and c != 0 for d, c in zip(done, codes, strict=True))
            if failed and not killed_others:
                killed_others = True
                self._each_node(
                    inp.handle,
                    [n for n in nodes if not done[n.rank]],
                    lambda n: self._runner(inp.handle, n).nodelet(
                        "kill", _phase_dir(n, inp, inp.phase)
                    ),
                )
                continue
            activity.heartbeat(sum(done))
            self._sleep(inp.poll_seconds)

    @activity.defn(name="observe_cluster")
    def observe_cluster(self, inp: ObserveInput) -> list[Observation]:
        """One look at a cluster: which nodes the provider reports preempted or gone, and
        how the phase ended on each node where it did. Unreachable nodes say nothing."""
        handle = inp.ref.handle
        if handle is None:
            return []
        provider = self.providers.get(handle.infra)
        out = [
            Observation(cluster=handle.cluster, rank=n.rank, state="preempted")
            for n, state in zip(handle.nodes, provider.node_states(handle), strict=True)
            if state != "up"
        ]

        def look(node: NodeInfo) -> Observation | None:
            try:
                word, _, rest = (
                    provider.runner(node)
                    .nodelet("status", f"{job_dir(node, inp.job_id)}/{inp.phase.value}")
                    .partition(" ")
                )
            except ApplicationError as e:
                if e.type == ErrorKind.UNREACHABLE.value:
                    return None
                raise
            if word not in ("exited", "killed"):
                return None
            return Observation(
                cluster=handle.cluster,
                rank=node.rank,
                state=word,
                job_id=inp.job_id,
                phase=inp.phase,
                exit_code=int(rest) if word == "exited" else None,
            )

        down = {o.rank for o in out}
        live = [n for n in handle.nodes if n.rank not in down]
        out += [o for o in self._each_node(handle, live, look) if o is not None]
        return out

    @activity.defn(name="save_logs")
    def save_logs(self, inp: SaveLogsInput) -> None:
        """Copy setup and run logs of every node to `<logs_dir>/<dest>/` (best effort: an
        unreachable node's log is skipped, never a reason to keep the cluster)."""
        if self.logs_dir is None:
            return
        dest = self.logs_dir / inp.dest
        dest.mkdir(parents=True, exist_ok=True)

        def save(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            for phase in (Phase.SETUP, Phase.RUN):
                try:
                    data = runner.read_file(log_path(node, inp.job_id, phase))
                except ApplicationError:
                    return
                if data:
                    (dest / f"{phase.value}-rank{node.rank}.log").write_bytes(data)

        self._each_node(inp.handle, inp.handle.nodes, save)

    @activity.defn(name="kill_job")
    def kill_job(self, inp: KillInput) -> None:
        """Kill both phases of a job on every node; a job that never started stays unstarted."""

        attempt = activity.info().attempt if activity.in_activity() else 1

        def kill(node: NodeInfo) -> None:
            runner = self._runner(inp.handle, node)
            try:
                for phase in (Phase.SETUP, Phase.RUN):
                    runner.nodelet("kill", _phase_dir(node, inp, phase))
            except ApplicationError as e:
                # A node that stays unreachable cannot be killed; after a few tries the
                # kill gives up on it rather than holding the cluster's queue forever.
                if e.type != ErrorKind.UNREACHABLE.value or attempt < 3:
                    raise
                logging.getLogger(__name__).warning(
                    "kill job %s: skipping node %s: %s", inp.job_id, node.rank, e
                )

        self._each_node(inp.handle, inp.handle.nodes, kill)

    @activity.defn(name="stop_nodes")
    def stop_nodes(self, ref: ClusterRef) -> None:
        if ref.handle is not None:
            handle = ref.handle
            _heartbeating(lambda: self.providers.get(ref.infra).stop(handle))

    @activity.defn(name="start_nodes")
    def start_nodes(self, ref: ClusterRef) -> ClusterHandle:
        assert ref.handle is not None, "start needs the handle of a launched cluster"
        handle = ref.handle
        return _heartbeating(lambda: self.providers.get(ref.infra).start(handle))

    @activity.defn(name="terminate_nodes")
    def terminate_nodes(self, ref: ClusterRef) -> None:
        _heartbeating(lambda: self.providers.get(ref.infra).terminate(ref))

    def all(self) -> list[Callable]:
        return [
            self.provision,
            self.sync_files,
            self.start_phase,
            self.watch_phase,
            self.kill_job,
            self.observe_cluster,
            self.save_logs,
            self.stop_nodes,
            self.start_nodes,
            self.terminate_nodes,
        ]
