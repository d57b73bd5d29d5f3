"""A service (`service-<name>`): replicas of a task behind a load balancer, kept at the
count the autoscaler asks for, replaced when they fail or are preempted, and moved from
one version to the next without dropping a request.

The workflow is SkyServe's controller and owns the replica set. Each replica is a
cluster launched through the shared launch path (placements, failover, cleanup as for
any cluster), then set up and started; its run command is the server. One activity at a
time, the serving loop (activities/serve/replicas.py), probes every replica, keeps the
load balancer's upstreams to the ones that answer and comes back with what changed or,
every few seconds, the request count that drives the autoscaler. The run command
ending, or the nodes being preempted, comes from the watcher like any job's phase.

Decisions are made in one place (`_reconcile`), from the state alone, after anything
happened; timers (initial delay, probe failures, drains, scale delays, launch retries)
are workflow timers. A service lives for months: it continues as new when Temporal
suggests it, between launches, carrying `ServiceState`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from skyloom.activities import models as m
    from skyloom.activities.errors import message_of
    from skyloom.activities.models import (
        ClusterRef,
        Observation,
        Phase,
        PhaseInput,
        ProbeTarget,
        ServeInput,
        ServeReport,
        ServiceRef,
        SyncInput,
    )
    from skyloom.workflows import autoscaler, calls
    from skyloom.workflows.launch import Launcher, LaunchFailed, PhaseWatch, Stopped
    from skyloom.workflows.models import (
        DESCRIBE_QUERY,
        MANAGED_JOB_ON_CLUSTER,
        OBSERVE_SIGNAL,
        SERVICE_WORKFLOW,
        DownServiceInput,
        ReplicaStatus,
        ReplicaView,
        ServiceInput,
        ServiceSpec,
        ServiceState,
        ServiceStatus,
        ServiceUpdate,
        ServiceView,
        UpdateServiceInput,
        UpdateServiceResult,
    )
    from skyloom.workflows.recovery import Ending
    from skyloom.workflows.search import index, invalid_input

R = ReplicaStatus
# A replica runs as job 1 of its cluster, like a managed job's attempt.
_JOB = MANAGED_JOB_ON_CLUSTER
_MAX_EVENTS = 50
_MAX_ENDED = 10
_MAX_RETRY_GAP = timedelta(minutes=5)
_RELEASE_TRIES = 3
_MIN_WAIT = timedelta(milliseconds=100)
# The serving loop returns every few seconds; it heartbeats every round, so a dead
# worker's loop moves to another within seconds (the load balancer keeps serving the
# last upstream set meanwhile).
_SERVE = calls.CallProfile(
    start_to_close=timedelta(hours=1),
    heartbeat=timedelta(seconds=5),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=2)),
)
# Statuses a replica fails with because of the user's task (counted towards FAILED).
_USER_FAILURES = {R.FAILED, R.FAILED_SETUP, R.FAILED_INITIAL_DELAY, R.FAILED_PROBING}


def replica_cluster(service: str, replica_id: int) -> str:
    """The cluster a replica runs on: `<service>-<id>`, the service's name shortened to
    keep it a valid name."""
    suffix = f"-{replica_id}"
    return service[: 63 - len(suffix)] + suffix


@workflow.defn(name=SERVICE_WORKFLOW)
class ServiceWorkflow:
    @workflow.init
    def __init__(self, inp: ServiceInput) -> None:
        self.inp = inp
        self.s = inp.carried or ServiceState(
            view=ServiceView(
                name=inp.name,
                status=ServiceStatus.REPLICA_INIT,
                load_balancing_policy=inp.spec.load_balancing_policy,
                started_at=workflow.now(),
            ),
            versions={1: inp.spec},
        )
        self.view = self.s.view
        self.phases = PhaseWatch(self.s.observed)
        # Launches and releases in flight (coroutines of this run, by replica id).
        self.busy: dict[int, asyncio.Task] = {}
        self.serving: asyncio.Future | None = None
        self.serving_key: tuple | None = None
        self.news = False

    # ---- messages ---------------------------------------------------------------------

    @workflow.signal(name=OBSERVE_SIGNAL)
    def observe(self, observations: list[Observation]) -> None:
        live = {ref.cluster: ref for ref in self.s.live.values()}
        self.phases.observe(
            [
                o
                for o in observations
                if o.cluster in live and o.owner in (None, live[o.cluster].owner)
            ]
        )
        self.news = True

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> ServiceView:
        return self.view.model_copy(
            update={"replicas": [*self.s.ended, *sorted(self.s.replicas.values(), key=_rid)]}
        )

    @workflow.update(name=ServiceUpdate.UPDATE)
    async def update(self, inp: UpdateServiceInput) -> UpdateServiceResult:
        version = max(self.s.versions) + 1
        self.s.versions[version] = inp.spec
        self.s.update_mode = inp.mode
        self.s.failures_in_a_row, self.s.retry_at = 0, None
        self.view.version = version
        self.view.load_balancing_policy = inp.spec.load_balancing_policy
        self.s.scale = autoscaler.retarget(inp.spec.policy, self._scale(), workflow.now())
        self._event(f"version {version} ({inp.mode} update)")
        self.news = True
        return UpdateServiceResult(version=version)

    @update.validator
    def _check_update(self, inp: UpdateServiceInput) -> None:
        problem = inp.problems()
        if problem:
            raise ValueError(problem)
        if self.s.down_requested:
            raise ValueError(f"service {self.inp.name} is shutting down")

    @workflow.update(name=ServiceUpdate.DOWN)
    async def down(self, inp: DownServiceInput) -> ServiceView:
        self.s.down_requested = True
        self.news = True
        await workflow.wait_condition(
            lambda: self.view.status in (ServiceStatus.DOWN, ServiceStatus.FAILED_CLEANUP)
        )
        return self.describe()

    # ---- main -------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ServiceInput) -> ServiceView:
        problem = inp.problems(workflow.info().workflow_id)
        if inp.carried is not None and workflow.info().continued_run_id is None:
            problem = "carried: only a continued run carries state"
        if problem is not None:
            raise invalid_input(SERVICE_WORKFLOW, problem)
        self._scale()
        self._index()
        try:
            if self.s.lb_port is None:
                self._serve_report(await self._serve_call(ServeInput(service=inp.name)))
            while not self.s.down_requested:
                self._reconcile()
                if self._continue_suggested() and not self.busy:
                    break
                self._keep_serving()
                due = self._next_due()
                # Never a zero timeout: it would not yield, and a due time nothing can act
                # on yet must not spin the loop.
                timeout = None if due is None else max(due - workflow.now(), _MIN_WAIT)
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self.news or self.s.down_requested or self._served(),
                        timeout=timeout,
                    )
                self.news = False
                if self._served():
                    await self._take_report()
            else:
                await self._shut_down()
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self.describe()
        except asyncio.CancelledError:
            self.s.down_requested = True
            await self._shut_down()
            raise
        await self._stop_serving()
        await workflow.wait_condition(workflow.all_handlers_finished)
        self.s.observed = self.phases.known()
        workflow.continue_as_new(inp.model_copy(update={"carried": self.s}))

    def _continue_suggested(self) -> bool:
        info = workflow.info()
        limit = self.inp.continue_after_events
        return info.is_continue_as_new_suggested() or (
            limit is not None and info.get_current_history_length() > limit
        )

    # ---- decisions --------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Look at every replica and the wanted counts; start what must start (launches,
        releases) as coroutines of their own. Deterministic, from the state alone."""
        now = workflow.now()
        if self.s.retry_at is not None and now >= self.s.retry_at:
            self.s.retry_at = None  # the gap after a failure is over
        cur_version = max(self.s.versions)
        cur = self.s.versions[cur_version]
        for r in list(self.s.replicas.values()):
            self._check_replica(r, now)
        scale = self._scale()
        self.s.scale = autoscaler.decide(cur.policy, scale, now)
        self.view.target_replicas = target = self.s.scale.target
        alive = [r for r in self.s.replicas.values() if r.status.alive]
        mine = [r for r in alive if r.version == cur_version]
        ready_spot = sum(1 for r in mine if r.spot and r.status is R.READY)
        want_spot, want_od = autoscaler.split(cur.policy, target, cur.spot, ready_spot)
        failed = self._version_failed(cur_version)
        for spot, want in ((True, want_spot), (False, want_od)):
            have = [r for r in mine if r.spot == spot]
            if len(have) > want:
                for r in sorted(have, key=_drain_order)[: len(have) - want]:
                    self._drain(r, "scaled down")
            elif len(have) < want and not failed and self._may_launch(now):
                for _ in range(want - len(have)):
                    self._new_replica(cur_version, spot)
        # Older versions: rolling keeps as many READY old replicas as the new version
        # lacks; blue_green keeps them all until the new version is wholly READY.
        ready_new = sum(1 for r in mine if r.status is R.READY)
        old = [r for r in alive if r.version != cur_version]
        if self.s.update_mode == "blue_green" and ready_new < target:
            keeping = {r.id for r in old}
        else:
            keep = max(0, target - ready_new)
            old_ready = sorted((r for r in old if r.status is R.READY), key=_rid)
            keeping = {r.id for r in old_ready[len(old_ready) - keep :]} if keep else set()
        for r in old:
            if r.id not in keeping:
                self._drain(r, f"version {cur_version} replaces it")
        for rid, at in list(self.s.release_at.items()):
            if at <= now and rid not in self.busy:
                self._start(rid, self._release(rid))
        self._prune_versions()
        self._set_status()

    def _check_replica(self, r: ReplicaView, now: datetime) -> None:
        if not r.status.alive or r.handle is None:
            return
        spec = self.s.versions[r.version]
        failure_timeout = spec.probe.failure_timeout_seconds
        if self.phases.preempted(r.handle):
            self._fail(r, R.PREEMPTED, "its nodes were preempted")
        elif r.started_at is not None:
            out = self.phases.outcome(r.handle, _JOB, Phase.RUN, spec.task.spec.num_nodes)
            if out is not None:
                code = f" (exit code {out.exit_code})" if out.exit_code is not None else ""
                why = out.reason or "its run command ended"
                if out.ending is Ending.PREEMPTED:
                    self._fail(r, R.PREEMPTED, why)
                else:
                    self._fail(r, R.FAILED, f"{why}{code}")
            elif r.status is R.STARTING and now >= self._give_up_at(r):
                delay = spec.probe.initial_delay_seconds
                self._fail(r, R.FAILED_INITIAL_DELAY, f"not ready within {delay:g} s")
            elif r.status is R.NOT_READY:
                since = self.s.failing_since.get(r.id, now)
                if now >= since + timedelta(seconds=failure_timeout):
                    self._fail(r, R.FAILED_PROBING, r.reason or "failed its readiness probe")

    def _fail(self, r: ReplicaView, status: ReplicaStatus, why: str) -> None:
        r.status, r.reason = status, why
        self._event(f"replica {r.id}: {status.value}: {why}")
        self.s.failing_since.pop(r.id, None)
        if status in _USER_FAILURES and r.version not in self.s.ready_versions:
            self.s.failures_in_a_row += 1
        if status is not R.PREEMPTED:
            n = max(1, self.s.failures_in_a_row)
            gap = timedelta(seconds=self.inp.retry_launch_seconds * 2 ** (n - 1))
            self.s.retry_at = workflow.now() + min(gap, _MAX_RETRY_GAP)
        self.s.release_at[r.id] = workflow.now()
        self.news = True

    def _drain(self, r: ReplicaView, why: str) -> None:
        """Out of the rotation now; released once its requests in flight are done."""
        if r.status is R.SHUTTING_DOWN:
            return
        was_serving = r.status in (R.READY, R.NOT_READY)
        r.status, r.reason = R.SHUTTING_DOWN, why
        self._event(f"replica {r.id}: draining ({why})")
        gap = timedelta(seconds=self.inp.drain_seconds if was_serving else 0)
        self.s.release_at[r.id] = workflow.now() + gap
        self.news = True

    def _may_launch(self, now: datetime) -> bool:
        return self.s.retry_at is None or now >= self.s.retry_at

    def _version_failed(self, version: int) -> bool:
        return (
            version not in self.s.ready_versions
            and self.s.failures_in_a_row >= self.inp.max_failures
        )

    def _new_replica(self, version: int, spot: bool) -> None:
        rid = self.s.next_replica_id
        self.s.next_replica_id += 1
        cluster = replica_cluster(self.inp.name, rid)
        r = ReplicaView(
            id=rid,
            version=version,
            status=R.PENDING,
            cluster=cluster,
            spot=spot,
            launched_at=workflow.now(),
        )
        self.s.replicas[rid] = r
        self._event(f"replica {rid}: launching{' (spot)' if spot else ''}, version {version}")
        self._start(rid, self._launch(r))

    def _start(self, rid: int, work: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                self.busy.pop(rid, None)
                self.news = True

        self.busy[rid] = asyncio.create_task(run())

    def _set_status(self) -> None:
        replicas = self.s.replicas.values()
        if self.s.down_requested:
            status = ServiceStatus.SHUTTING_DOWN
        elif any(r.status is R.READY for r in replicas):
            status = ServiceStatus.READY
        elif self._version_failed(max(self.s.versions)):
            status = ServiceStatus.FAILED
        elif not any(r.status.alive for r in replicas) and self.view.target_replicas == 0:
            status = ServiceStatus.NO_REPLICA
        else:
            status = ServiceStatus.REPLICA_INIT
        if status is not self.view.status:
            self.view.status = status
            if status is ServiceStatus.FAILED:
                self.view.reason = (
                    f"version {max(self.s.versions)} failed {self.s.failures_in_a_row} times "
                    "in a row and was never READY; fix it with `skyloom serve update`"
                )
            self._event(f"service {status.value}")
            self._index()

    def _next_due(self) -> datetime | None:
        """The next moment a decision may change with nothing else happening."""
        cur = self._current()
        # A replica being launched is released when its launch ends (which wakes us).
        times = [at for rid, at in self.s.release_at.items() if rid not in self.busy]
        if self.s.retry_at is not None:
            times.append(self.s.retry_at)
        for r in self.s.replicas.values():
            spec = self.s.versions[r.version]
            if r.status is R.STARTING and r.started_at is not None:
                times.append(self._give_up_at(r))
            if r.status is R.NOT_READY and r.id in self.s.failing_since:
                wait = timedelta(seconds=spec.probe.failure_timeout_seconds)
                times.append(self.s.failing_since[r.id] + wait)
        check = autoscaler.next_check(cur.policy, self._scale(), workflow.now())
        if check is not None:
            times.append(check)
        return min(times) if times else None

    def _give_up_at(self, r: ReplicaView) -> datetime:
        delay = self.s.versions[r.version].probe.initial_delay_seconds
        return (r.started_at or workflow.now()) + timedelta(seconds=delay)

    # ---- one replica ------------------------------------------------------------------

    async def _launch(self, r: ReplicaView) -> None:
        """Provision the replica's cluster, set it up and start its run command (the
        server); from then on the serving loop probes it."""
        spec = self.s.versions[r.version]
        task = spec.task
        candidates = [
            c.model_copy(update={"resources": {**c.resources, "use_spot": r.spot}})
            for c in task.candidates
        ]
        owner = f"{r.cluster}.{workflow.info().run_id[:8]}"

        def stopping() -> bool:
            return self.s.down_requested or r.status is not R.PROVISIONING

        def on_try(ref: ClusterRef) -> None:
            self.s.live[r.id] = ref

        r.status = R.PROVISIONING
        launcher = Launcher(
            cluster=r.cluster,
            owner=owner,
            num_nodes=task.spec.num_nodes,
            candidates=candidates,
            ordered=task.ordered,
            on_try=on_try,
            stop=stopping,
        )
        try:
            placements = await launcher.plan()
            handle, _ = await launcher.provision(placements)
        except LaunchFailed as e:
            self.s.live.pop(r.id, None)  # each failed placement was cleaned up
            if r.status is R.PROVISIONING:
                self._fail(r, R.FAILED_PROVISION, str(e))
            return
        except Stopped:
            return  # drained or down while booting: the release removes what was made
        except ActivityError as e:
            if r.status is R.PROVISIONING:
                self._fail(r, R.FAILED_PROVISION, message_of(e))
            return
        self.s.live[r.id] = ClusterRef(
            cluster=r.cluster, infra=handle.infra, owner=owner, handle=handle
        )
        r.handle, r.infra = handle, handle.infra
        port = handle.head.ports.get(spec.port, spec.port)
        r.address = f"{handle.head.ip}:{port}"
        if r.status is not R.PROVISIONING:
            return  # drained meanwhile
        r.status = R.STARTING
        self._event(f"replica {r.id}: on {handle.infra}, starting")
        env = {
            **task.spec.envs,
            "SKYPILOT_SERVE_REPLICA_ID": str(r.id),
            "SKYLOOM_REPLICA_PORT": str(port),
            "SKYLOOM_SERVICE_NAME": self.inp.name,
        }
        try:
            if task.spec.workdir or task.spec.file_mounts:
                await calls.SYNC.run(
                    m.SYNC_FILES,
                    SyncInput(
                        handle=handle,
                        job_id=_JOB,
                        workdir=task.spec.workdir,
                        file_mounts=task.spec.file_mounts,
                    ),
                )
            if task.spec.setup:
                out = await self.phases.run(
                    self._phase_input(r, Phase.SETUP, task.spec.setup, env),
                    self.s.live[r.id],
                    check_every=timedelta(seconds=self.inp.check_every_seconds),
                    stop=lambda: self.s.down_requested or r.status is not R.STARTING,
                )
                if out.ending is not Ending.SUCCEEDED:
                    status = R.PREEMPTED if out.ending is Ending.PREEMPTED else R.FAILED_SETUP
                    self._fail(r, status, out.reason or "setup failed")
                    return
            if r.status is not R.STARTING:
                return
            await calls.QUICK.run(
                m.START_PHASE, self._phase_input(r, Phase.RUN, task.spec.run or "true", env)
            )
        except Stopped:
            return
        except ActivityError as e:
            if r.status is R.STARTING:
                self._fail(r, R.FAILED, message_of(e))
            return
        r.started_at = workflow.now()

    def _phase_input(
        self, r: ReplicaView, phase: Phase, command: str, env: dict[str, str]
    ) -> PhaseInput:
        assert r.handle is not None
        task = self.s.versions[r.version].task
        return PhaseInput(
            handle=r.handle,
            job_id=_JOB,
            phase=phase,
            command=command,
            envs=env,
            secrets=task.spec.secrets,
            num_nodes=task.spec.num_nodes,
            task_id=f"skyloom-service-{self.inp.name}-{r.id}",
            num_gpus_per_node=task.spec.num_gpus_per_node,
            notify=workflow.info().workflow_id,
        )

    async def _release(self, rid: int) -> None:
        """Terminate the replica's cluster and forget it (kept a while among the ended)."""
        r = self.s.replicas[rid]
        ref = self.s.live.get(rid)
        if ref is not None:
            try:
                await calls.PROVISION.run(m.TERMINATE_NODES, ref)
            except ActivityError as e:
                self._event(f"replica {rid}: could not release {ref.cluster} yet: {message_of(e)}")
                self.s.release_at[rid] = workflow.now() + timedelta(minutes=1)
                return
            self.s.live.pop(rid, None)
            self.phases.forget(ref.cluster)
        self.s.release_at.pop(rid, None)
        self.s.failing_since.pop(rid, None)
        del self.s.replicas[rid]
        if r.status.failed:
            # A failure is kept a while, to be seen with its reason; a drained replica is
            # simply gone, as in SkyServe.
            r.handle = None
            self.s.ended.append(r)
            del self.s.ended[:-_MAX_ENDED]

    # ---- the serving loop -------------------------------------------------------------

    def _targets(self) -> list[ProbeTarget]:
        return [
            ProbeTarget(
                id=r.id,
                address=r.address,
                ready=r.status is R.READY,
                probe=self.s.versions[r.version].probe,
            )
            for r in sorted(self.s.replicas.values(), key=_rid)
            if r.address is not None
            and r.started_at is not None
            and r.status in (R.STARTING, R.READY, R.NOT_READY)
        ]

    def _keep_serving(self) -> None:
        """Run the serving loop for the current replica set; a new set replaces it."""
        cur = self._current()
        targets = self._targets()
        autoscaling = cur.policy.target_qps_per_replica is not None
        report = self.inp.report_seconds if autoscaling else self.inp.idle_report_seconds
        key = (tuple((t.id, t.ready, t.address) for t in targets), cur.load_balancing_policy)
        if self.serving is not None and key == self.serving_key:
            return
        if self.serving is not None:
            self.serving.cancel()
        self.s.serve_generation += 1
        self.serving_key = key
        self.serving = _quiet(
            asyncio.ensure_future(
                self._serve_call(
                    ServeInput(
                        service=self.inp.name,
                        lb_port=self.s.lb_port,
                        policy=cur.load_balancing_policy,
                        replicas=targets,
                        report_seconds=report,
                        generation=self.s.serve_generation,
                    )
                )
            )
        )

    def _serve_call(self, inp: ServeInput) -> Any:
        return _SERVE.run(m.SERVE_REPLICAS, inp)

    def _served(self) -> bool:
        return self.serving is not None and self.serving.done()

    async def _take_report(self) -> None:
        task, self.serving, self.serving_key = self.serving, None, None
        assert task is not None
        try:
            report: ServeReport = task.result()
        except asyncio.CancelledError:
            return
        except ActivityError as e:
            # Only a refusal ends it (a load balancer away is retried in the activity).
            self._event(f"serving loop: {message_of(e)}")
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self.s.down_requested, timeout=10)
            return
        self._serve_report(report)

    def _serve_report(self, report: ServeReport) -> None:
        now = workflow.now()
        self.s.lb_host, self.s.lb_port = report.lb_host, report.lb_port
        endpoint = f"http://{report.lb_host}:{report.lb_port}"
        if self.view.endpoint != endpoint:
            self.view.endpoint = endpoint
            self._index()
        for change in report.changes:
            r = self.s.replicas.get(change.id)
            if r is None or not r.status.alive:
                continue
            if change.ready and r.status in (R.STARTING, R.NOT_READY):
                if r.status is R.STARTING:
                    r.ready_at = now
                    self.s.failures_in_a_row = 0
                    if r.version not in self.s.ready_versions:
                        self.s.ready_versions.append(r.version)
                r.status, r.reason = R.READY, None
                self.s.failing_since.pop(r.id, None)
                self._event(f"replica {r.id}: READY")
            elif not change.ready and r.status is R.READY:
                r.status, r.reason = R.NOT_READY, change.error
                self.s.failing_since[r.id] = now
                self._event(f"replica {r.id}: NOT_READY: {change.error}")
        seen = report.requests
        served = seen - self.s.requests_seen if seen >= self.s.requests_seen else seen
        self.s.requests_seen = seen
        self.s.scale = autoscaler.record(self._scale(), now, served)
        self.view.qps = round(autoscaler.qps(self.s.scale, now), 3)

    async def _stop_serving(self) -> None:
        if self.serving is not None:
            self.serving.cancel()
            with contextlib.suppress(BaseException):
                await self.serving
        self.serving, self.serving_key = None, None

    # ---- down -------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        self._set_status()
        await self._stop_serving()
        # Launches stop at their next step (their Launcher sees the down, and they start
        # no server on a replica that is shutting down), then every cluster goes.
        for r in self.s.replicas.values():
            if r.status.alive:
                r.status, r.reason = R.SHUTTING_DOWN, "service down"
        if self.busy:
            await asyncio.gather(*self.busy.values(), return_exceptions=True)
        with contextlib.suppress(ActivityError):
            await calls.QUICK.run(m.REMOVE_LOAD_BALANCER, ServiceRef(service=self.inp.name))
        for _ in range(_RELEASE_TRIES):
            rids = list(self.s.replicas)
            await asyncio.gather(*(self._release(rid) for rid in rids))
            if not self.s.replicas:
                break
        if self.s.replicas:
            left = ", ".join(r.cluster for r in self.s.replicas.values())
            self.view.reason = f"could not release {left}: nodes may be left"
            self.view.status = ServiceStatus.FAILED_CLEANUP
        else:
            self.view.status = ServiceStatus.DOWN
        self.view.endpoint = None
        self._event(f"service {self.view.status.value}")
        self._index()

    # ---- helpers ----------------------------------------------------------------------

    def _current(self) -> ServiceSpec:
        return self.s.versions[max(self.s.versions)]

    def _scale(self) -> autoscaler.ScaleState:
        if self.s.scale is None:
            self.s.scale = autoscaler.initial_state(self._current().policy, workflow.now())
        return self.s.scale

    def _prune_versions(self) -> None:
        current = max(self.s.versions)
        used = {r.version for r in self.s.replicas.values()}
        for v in [v for v in self.s.versions if v != current and v not in used]:
            del self.s.versions[v]

    def _index(self) -> None:
        cur = self._current()
        infra = cur.task.candidates[0].infra
        ready = sum(1 for r in self.s.replicas.values() if r.status is R.READY)
        index(
            kind="service",
            name=self.inp.name,
            status=self.view.status.value,
            infra=infra,
            user=self.inp.user,
            memo={"endpoint": self.view.endpoint, "version": self.view.version},
        )
        workflow.set_current_details(
            f"{self.view.status.value} · {ready}/{self.view.target_replicas} ready · "
            f"{self.view.endpoint or 'no endpoint yet'}"
        )

    def _event(self, text: str) -> None:
        self.view.events.append(f"{workflow.now().isoformat(timespec='seconds')} {text}")
        del self.view.events[:-_MAX_EVENTS]


def _quiet(task: asyncio.Future) -> asyncio.Future:
    """A task whose outcome may never be read (a replaced serving loop): read it anyway."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


def _rid(r: ReplicaView) -> int:
    return r.id


def _drain_order(r: ReplicaView) -> tuple[int, int]:
    """Which replica goes first when there are too many: one not serving, the newest."""
    return (0 if r.status is not R.READY else 1, -r.id)
