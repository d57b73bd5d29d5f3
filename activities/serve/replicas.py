"""The serving loop of one service: probe its replicas and keep the load balancer's
upstreams to the ones that answer, until there is news for the service workflow.

The workflow owns the replica set and decides (launch, replace, drain); this activity is
its eyes and its hand on the load balancer. It probes every replica it is given each
`probe.interval_seconds`, each on its own (one slow replica delays no other), and the
moment a replica answers for the first time or stops answering it changes the upstream
set, then returns the change: a replica leaves the rotation within a probe interval,
with no round trip through the engine. With no change it returns after
`report_seconds` with the load balancer's request counter (the workflow's QPS), so a
service writes history every few seconds at most, never per request or per probe.

Every round also puts the upstream set back if the load balancer lost it (restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
from skyloom.activities.errors import ErrorKind, provider_error
from skyloom.activities.models import (
    REMOVE_LOAD_BALANCER,
    SERVE_REPLICAS,
    ProbeSpec,
    ProbeTarget,
    ReplicaProbe,
    ServeInput,
    ServeReport,
    ServiceRef,
)
from skyloom.activities.serve.lb import LBError, LoadBalancer
from skyloom.spec.names import name_problem
from temporalio import activity

log = logging.getLogger("skyloom.serve")

# How often the upstream set is checked against the load balancer's (a restarted one
# is put back within this).
_SYNC_EVERY = 1.0


class Prober:
    """Asks replicas whether they are ready, over one shared HTTP client."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,
        )

    async def probe(self, address: str, spec: ProbeSpec) -> str | None:
        """None when the replica answers 2xx in time; else why not."""
        url = f"http://{address}{spec.path}"
        timeout = httpx.Timeout(spec.timeout_seconds or None)
        try:
            if spec.post_data is not None:
                r = await self.client.post(
                    url, json=spec.post_data, headers=spec.headers, timeout=timeout
                )
            else:
                r = await self.client.get(url, headers=spec.headers, timeout=timeout)
        except httpx.TimeoutException:
            return f"no answer from {url} within {spec.timeout_seconds:g} s"
        except httpx.HTTPError as e:
            return f"{url}: {type(e).__name__} {e}".rstrip()
        if 200 <= r.status_code < 300:
            return None
        return f"{url} answered {r.status_code}"

    async def aclose(self) -> None:
        await self.client.aclose()


class _Watched:
    """What this loop last saw of one replica."""

    def __init__(self, target: ProbeTarget) -> None:
        self.target = target
        self.ready = target.ready
        self.error: str | None = None
        self.probed = asyncio.Event()


class ServeActivities:
    """The serving activities, around one load balancer and one prober."""

    def __init__(self, lb: LoadBalancer, public_host: str, prober: Prober | None = None) -> None:
        self.lb = lb
        # The host clients reach the load balancer at (its endpoint's host).
        self.public_host = public_host
        self.prober = prober or Prober()
        # The newest loop started here for each service: an older one, replaced, must not
        # put its stale upstream set back while its cancellation is on the way.
        self._generations: dict[str, int] = {}

    @activity.defn(name=SERVE_REPLICAS.name)
    async def serve_replicas(self, inp: ServeInput) -> ServeReport:
        _check(inp.service)
        try:
            port = await self.lb.ensure(inp.service, inp.lb_port)
        except LBError as e:
            raise provider_error(ErrorKind.UNREACHABLE, f"load balancer: {e}") from e
        report = ServeReport(lb_host=self.public_host, lb_port=port)
        if inp.lb_port is None:
            return report  # the first call: the workflow learns its endpoint at once
        watched = {t.id: _Watched(t) for t in inp.replicas}
        latest = self._generations.get(inp.service, 0)
        self._generations[inp.service] = max(latest, inp.generation)
        probes = [asyncio.create_task(self._probe_loop(w)) for w in watched.values()]
        try:
            report.changes = await self._until_news(inp, port, watched)
            report.requests = await self._requests(inp.service)
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
        return report

    async def _until_news(
        self, inp: ServeInput, port: int, watched: dict[int, _Watched]
    ) -> list[ReplicaProbe]:
        deadline = time.monotonic() + inp.report_seconds
        synced: list[str] | None = None
        last_sync = 0.0
        while True:
            if inp.generation < self._generations.get(inp.service, 0):
                return []  # replaced by a newer loop
            changes = [
                ReplicaProbe(id=w.target.id, ready=w.ready, error=w.error)
                for w in watched.values()
                if w.ready != w.target.ready
            ]
            upstreams = sorted(w.target.address for w in watched.values() if w.ready)
            now = time.monotonic()
            if upstreams != synced or now - last_sync >= _SYNC_EVERY:
                try:
                    if await self.lb.set_upstreams(inp.service, port, upstreams, inp.policy):
                        log.info("%s: upstreams now %s", inp.service, upstreams or "none")
                except LBError as e:
                    # Retried (a restarted load balancer comes back within seconds).
                    raise provider_error(ErrorKind.UNREACHABLE, f"load balancer: {e}") from e
                synced, last_sync = upstreams, now
            if changes or now >= deadline:
                return changes
            activity.heartbeat()
            # Wake at the next probe result, or to sync and heartbeat.
            waits = [asyncio.create_task(w.probed.wait()) for w in watched.values()]
            timeout = max(0.0, min(_SYNC_EVERY, deadline - now))
            try:
                if waits:
                    await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
                else:
                    await asyncio.sleep(timeout)
            finally:
                for t in waits:
                    t.cancel()
            for w in watched.values():
                w.probed.clear()

    async def _probe_loop(self, w: _Watched) -> None:
        spec = w.target.probe
        while True:
            started = time.monotonic()
            error = await self.prober.probe(w.target.address, spec)
            ready = error is None
            if ready != w.ready or error != w.error:
                w.ready, w.error = ready, error
                w.probed.set()
            await asyncio.sleep(max(0.0, spec.interval_seconds - (time.monotonic() - started)))

    async def _requests(self, service: str) -> int:
        with contextlib.suppress(LBError):
            return await self.lb.requests_served(service)
        return 0

    @activity.defn(name=REMOVE_LOAD_BALANCER.name)
    async def remove_load_balancer(self, ref: ServiceRef) -> None:
        _check(ref.service)
        try:
            await self.lb.remove(ref.service)
        except LBError as e:
            raise provider_error(ErrorKind.UNREACHABLE, f"load balancer: {e}") from e

    def all(self) -> list:
        return [self.serve_replicas, self.remove_load_balancer]


def _check(service: str) -> None:
    problem = name_problem(service)
    if problem:
        raise provider_error(ErrorKind.INVALID_SPEC, f"service: {problem}")
