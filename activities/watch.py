"""The watcher: one long-running activity per watch key (a provider, or one of its regions)
that sweeps every watched phase on it and signals the workflows whose phases ended or
whose nodes were preempted or cut off.

Workflows wait for their phases with no activity and no timer (a waiting workflow writes
no history). There is exactly one watcher per key however many workers run: each is the
single activity of the `skyloom-watch-<key>` workflow (workflows/watch.py), so Temporal
runs it on one worker at a time and, when that worker dies, hands it to another after
the heartbeat timeout.

Nothing here is durable, nor needs to be: the truth is on the nodes. A watcher that
starts afresh (another worker) reports every ended phase it finds once more; workflows
ignore what they already know. A transient failure of a sweep changes nothing, so it can
never look like an ending or a preemption.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from skyloom.activities import models as m
from skyloom.activities.cluster import Providers
from skyloom.activities.errors import ErrorKind, provider_error
from skyloom.activities.models import (
    OBSERVE_SIGNAL,
    Observation,
    WatchedObservation,
    WatchInput,
)
from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger("skyloom.watcher")

# Longest wait between two rounds, however slow sweeping gets.
MAX_PAUSE = 3.0
# What was told is remembered until it has been absent from this many sweeps in a row.
FORGET_AFTER_ROUNDS = 60
# Signals sent at once when many phases end in the same round.
SIGNALS_IN_FLIGHT = 32
# While a sweep runs, the activity heartbeats this often.
_HEARTBEAT_EVERY = 2.0

T = TypeVar("T")


class SignalClient(Protocol):
    """What the watcher needs of a Temporal client (tests pass a recording fake)."""

    def get_workflow_handle(self, workflow_id: str) -> Any: ...


class Tracker:
    """What one watcher has told whom: each change reaches its workflow once, news that
    could not be delivered is told again, and a key that stays absent is forgotten."""

    def __init__(self, forget_after: int = FORGET_AFTER_ROUNDS) -> None:
        # (workflow id, cluster owner, observation key) → (state last delivered, round it
        # was last seen). The owner tells a cluster from a later one of the same name.
        self.delivered: dict[tuple[str, str | None, Any], tuple[str, int]] = {}
        self.forget_after = forget_after
        self.rounds = 0

    def news(self, seen: list[WatchedObservation]) -> dict[str, list[Observation]]:
        """What this round's sweep shows that its workflow has not been told."""
        self.rounds += 1
        out: dict[str, list[Observation]] = defaultdict(list)
        for w in seen:
            key = (w.workflow_id, w.observation.owner, w.observation.key)
            known = self.delivered.get(key)
            if known is not None and known[0] == _signature(w.observation):
                self.delivered[key] = (known[0], self.rounds)
            else:
                out[w.workflow_id].append(w.observation)
        return out

    def told(self, wid: str, observations: list[Observation]) -> None:
        for o in observations:
            self.delivered[(wid, o.owner, o.key)] = (_signature(o), self.rounds)

    def forget_old(self) -> None:
        # Forget what has not been on any node for a while (its cluster is torn down).
        # Not at once: a host that misses one sweep must not make old news new again.
        # (A key never comes back for real: every attempt's cluster has a new name.)
        oldest = self.rounds - self.forget_after
        for key in [k for k, (_, r) in self.delivered.items() if r < oldest]:
            del self.delivered[key]


class Watcher:
    """Sweeps one watch key of one provider and tells the workflows."""

    def __init__(
        self,
        client: SignalClient,
        providers: Providers,
        key: str,
        interval: float = 1.0,
        forget_after: int = FORGET_AFTER_ROUNDS,
    ) -> None:
        self.client = client
        self.provider = providers.get(key)
        if key not in self.provider.watch_keys():
            raise provider_error(
                ErrorKind.INVALID_SPEC,
                f"watch key {key!r}: the {self.provider.name} infra watches "
                f"{self.provider.watch_keys() or 'nothing'}",
            )
        self.key = key
        # A cloud's sweep is an API call: it sets its own, longer, pace.
        self.interval = max(interval, self.provider.watch_interval)
        self.tracker = Tracker(forget_after)
        self._signals = asyncio.Semaphore(SIGNALS_IN_FLIGHT)

    async def round(self) -> int:
        """One sweep and its signals; returns how many workflows were told something.
        A sweep that fails is no news (logged), never an ending."""
        try:
            seen = await _beating(asyncio.to_thread(self.provider.sweep, self.key))
        except Exception:
            log.exception("sweeping %s failed; trying again next round", self.key)
            return 0
        news = self.tracker.news(seen)
        tells = asyncio.gather(*(self._tell(*item) for item in news.items()))
        told = sum(await _beating(tells))
        self.tracker.forget_old()
        return told

    async def _tell(self, wid: str, observations: list[Observation]) -> bool:
        async with self._signals:
            try:
                await self.client.get_workflow_handle(wid).signal(OBSERVE_SIGNAL, observations)
            except RPCError as e:
                if e.status != RPCStatusCode.NOT_FOUND:
                    log.warning("telling %s: %s; again next round", wid, e)
                    return False
                # The workflow is gone (finished): nothing to tell, ever.
        self.tracker.told(wid, observations)
        return True

    def pause_after(self, took: float) -> float:
        """Seconds to wait before the next round: the interval, stretched when a round is
        slow so that sweeping takes at most a fifth of the time (10,000 local jobs: a
        0.2 s sweep, a round every second), but never past MAX_PAUSE, which bounds how late
        a preemption or an exit is noticed."""
        return max(self.interval, min(4 * took, MAX_PAUSE))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        while stop is None or not stop.is_set():
            started = time.monotonic()
            await self.round()
            if activity.in_activity():
                activity.heartbeat(self.tracker.rounds)
            pause = self.pause_after(time.monotonic() - started)
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)


class WatchActivities:
    """The watcher as an activity: runs until cancelled (its worker stopping), heartbeating
    every round so that a dead worker's watch moves to another within seconds."""

    def __init__(self, providers: Providers, *, interval: float = 1.0) -> None:
        self.providers = providers
        self.interval = interval

    @activity.defn(name=m.WATCH_PROVIDER.name)
    async def watch_provider(self, inp: WatchInput) -> None:
        watcher = Watcher(activity.client(), self.providers, inp.key, interval=self.interval)
        log.info("watching %s on this worker", inp.key)
        try:
            await watcher.run()
        finally:
            log.info("no longer watching %s on this worker", inp.key)


async def _beating(work: Awaitable[T]) -> T:
    """Await work, heartbeating meanwhile when inside an activity (a slow sweep must not
    look like a dead worker)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=_HEARTBEAT_EVERY)
        if done:
            return task.result()
        if activity.in_activity():
            activity.heartbeat()


def _signature(o: Observation) -> str:
    return f"{o.state} {o.exit_code}"
