"""The shared watcher: one poll loop per worker for every watched job, on every provider.

Managed jobs wait for their phases with no activity and no timer (a waiting workflow
writes no history). This loop sweeps each provider once per round (one call per
provider/region, one look per host covering every job on it), compares with what it saw
last round, and signals only the workflows whose phases ended or whose nodes were
preempted. A transient failure of a sweep changes nothing, so it can never look like a
preemption.

Nothing here is durable, nor needs to be: the truth is on the nodes. A restarted worker
starts with an empty memory and reports every ended phase it finds once more; workflows
ignore what they already know. Several workers may all sweep; the same news twice is
harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from skyloom.activities.cluster import Providers
from skyloom.activities.models import Observation, WatchedObservation
from skyloom.workflows.models import OBSERVE_SIGNAL
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger("skyloom.watcher")


class Watcher:
    def __init__(self, client: Client, providers: Providers, interval: float = 1.0) -> None:
        self.client = client
        self.providers = providers
        self.interval = interval
        # (workflow id, observation key) → the state last delivered.
        self.delivered: dict[tuple[str, Any], str] = {}
        self.rounds = 0

    def sweep(self) -> list[WatchedObservation]:
        out: list[WatchedObservation] = []
        for name in self.providers.names():
            try:
                found = self.providers.get(name).scan()
            except Exception:
                log.exception("sweeping %s failed; trying again next round", name)
                continue
            out.extend(found or [])
        return out

    async def round(self) -> int:
        """One sweep and its signals; returns how many workflows were told something."""
        seen = await asyncio.to_thread(self.sweep)
        news: dict[str, list[Observation]] = defaultdict(list)
        alive: set[tuple[str, Any]] = set()
        for w in seen:
            key = (w.workflow_id, w.observation.key)
            alive.add(key)
            signature = f"{w.observation.state} {w.observation.exit_code}"
            if self.delivered.get(key) != signature:
                news[w.workflow_id].append(w.observation)
        told = 0
        for wid, observations in news.items():
            try:
                await self.client.get_workflow_handle(wid).signal(OBSERVE_SIGNAL, observations)
            except RPCError as e:
                if e.status != RPCStatusCode.NOT_FOUND:
                    log.warning("telling %s: %s; again next round", wid, e)
                    continue
                # The workflow is gone (finished): nothing to tell, ever.
            told += 1
            for o in observations:
                self.delivered[(wid, o.key)] = f"{o.state} {o.exit_code}"
        # Forget what is no longer on any node (cluster torn down).
        for key in [k for k in self.delivered if k not in alive]:
            del self.delivered[key]
        self.rounds += 1
        return told

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:
                log.exception("watch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
