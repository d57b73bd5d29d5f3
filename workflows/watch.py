"""The watcher workflow (`skyloom-watch-<key>`): the one place a provider (or one of its
regions) is swept, whatever the number of workers.

Its single activity runs for as long as its worker lives, sweeping and signalling the
workflows whose phases ended (activities/watch.py). Temporal runs an activity on one
worker at a time, so there is exactly one watcher per key; when its worker dies, the
heartbeat timeout hands it to another within seconds. The activity never returns, so the
workflow's history stays a handful of events; workers start it at start-up (a second
start finds it running).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from skyloom.activities import models as m
    from skyloom.workflows import calls
    from skyloom.workflows.models import WATCH_TASK_QUEUE, WATCHER_WORKFLOW, WatcherInput
    from skyloom.workflows.search import index, invalid_input


@workflow.defn(name=WATCHER_WORKFLOW)
class WatcherWorkflow:
    @workflow.run
    async def run(self, inp: WatcherInput) -> None:
        if not inp.key or not all(c.isalnum() or c in "-_/." for c in inp.key):
            raise invalid_input(WATCHER_WORKFLOW, f"key: {inp.key!r} is not a watch key")
        index(kind="watcher", name=inp.key, status="WATCHING", infra=inp.key, user="skyloom")
        workflow.set_current_details(f"watching {inp.key}")
        while True:
            await calls.WATCH.run(
                m.WATCH_PROVIDER, m.WatchInput(key=inp.key), task_queue=WATCH_TASK_QUEUE
            )
            # The activity only returns when told to stop (never today); start it again,
            # continuing as new first if the history asks for it.
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp)
