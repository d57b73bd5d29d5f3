"""The watcher's bookkeeping, with a scripted provider and a recording client: it tells
each workflow each change once, tells again what it failed to deliver, never turns a
failed sweep into news, and slows down rather than hog the worker."""

from __future__ import annotations

from collections import defaultdict

import pytest
from skyloom.activities.cluster import Providers
from skyloom.activities.models import (
    OBSERVE_SIGNAL,
    Capability,
    Observation,
    Phase,
    WatchedObservation,
)
from skyloom.activities.providers.base import Provider
from skyloom.activities.watch import MAX_PAUSE, Watcher
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode


class ScriptedProvider(Provider):
    name = "scripted"
    capabilities = frozenset({Capability.WATCH})

    def __init__(self) -> None:
        self.now: list[WatchedObservation] | Exception = []

    def sweep(self, key):
        assert key == "scripted"
        if isinstance(self.now, Exception):
            raise self.now
        return list(self.now)

    # Not used by the watcher.
    def offers(self, infra, resources, num_nodes):  # pragma: no cover
        raise NotImplementedError

    def create(self, req):  # pragma: no cover
        raise NotImplementedError

    def terminate(self, ref):  # pragma: no cover
        raise NotImplementedError

    def runner(self, node):  # pragma: no cover
        raise NotImplementedError


class RecordingClient:
    def __init__(self) -> None:
        self.told: dict[str, list[list[Observation]]] = defaultdict(list)
        self.fail: dict[str, RPCStatusCode] = {}

    def get_workflow_handle(self, wid: str):
        client = self

        class Handle:
            async def signal(self, name: str, arg: list[Observation]) -> None:
                assert name == OBSERVE_SIGNAL
                if wid in client.fail:
                    raise RPCError("no", client.fail[wid], b"")
                client.told[wid].append(arg)

        return Handle()


def ended(wid: str, cluster: str, code: int | None, state: str = "exited") -> WatchedObservation:
    return WatchedObservation(
        workflow_id=wid,
        observation=Observation(
            cluster=cluster, rank=0, state=state, job_id=1, phase=Phase.RUN, exit_code=code
        ),
    )


def watcher(forget_after: int = 60) -> tuple[Watcher, ScriptedProvider, RecordingClient]:
    provider = ScriptedProvider()
    client = RecordingClient()
    w = Watcher(client, Providers({"scripted": provider}), "scripted", forget_after=forget_after)
    return w, provider, client


async def test_each_change_is_told_once_to_its_workflow_only():
    w, provider, client = watcher()
    provider.now = [ended("job-1", "job-1-1", 0)]
    assert await w.round() == 1
    assert await w.round() == 0  # the same news is not news
    provider.now = [ended("job-1", "job-1-1", 0), ended("job-2", "job-2-1", None, "killed")]
    assert await w.round() == 1
    assert [o.state for (batch,) in [client.told["job-2"]] for o in batch] == ["killed"]
    assert len(client.told["job-1"]) == 1


async def test_a_failed_sweep_is_no_news_and_makes_old_news_no_news_again():
    w, provider, client = watcher()
    provider.now = [ended("job-1", "job-1-1", 0)]
    await w.round()
    provider.now = RuntimeError("host unreachable")
    assert await w.round() == 0
    provider.now = [ended("job-1", "job-1-1", 0)]
    assert await w.round() == 0  # nothing new happened: nobody is told twice
    assert len(client.told["job-1"]) == 1


async def test_undelivered_news_is_told_again_and_gone_workflows_are_dropped():
    w, provider, client = watcher()
    provider.now = [ended("job-1", "job-1-1", 3), ended("job-9", "job-9-1", 0)]
    client.fail = {"job-1": RPCStatusCode.UNAVAILABLE, "job-9": RPCStatusCode.NOT_FOUND}
    await w.round()
    assert not client.told
    client.fail = {"job-9": RPCStatusCode.NOT_FOUND}
    await w.round()
    assert [o.exit_code for o in client.told["job-1"][0]] == [3]
    # A finished workflow is not asked again and again.
    assert await w.round() == 0


async def test_what_stays_gone_is_forgotten():
    w, provider, _ = watcher(forget_after=3)
    provider.now = [ended("job-1", "job-1-1", 0)]
    await w.round()
    provider.now = []
    for _ in range(3):
        await w.round()
    assert w.tracker.delivered  # a host that misses a few sweeps is not news when back
    await w.round()
    assert not w.tracker.delivered


def test_slow_sweeps_stretch_the_pause_within_a_bound():
    w, _, _ = watcher()
    assert w.pause_after(0.01) == w.interval
    assert w.pause_after(0.5) == 2.0
    assert w.pause_after(10.0) == MAX_PAUSE


def test_a_key_the_provider_does_not_watch_is_refused():
    with pytest.raises(ApplicationError):
        Watcher(RecordingClient(), Providers({"scripted": ScriptedProvider()}), "scripted/x")
