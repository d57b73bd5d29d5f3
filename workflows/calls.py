"""Activity call profiles shared by the workflows.

Each profile is the timeout and retry contract of one kind of activity; workflows call
activities through a profile and a typed ref from `skyloom.activities.models` (so
workflow code never imports activity code, and argument and result types are checked).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from skyloom.activities.models import Activity
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True)
class CallProfile:
    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None
    cancellation: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL

    def run(self, act: Activity[I, O], arg: I, *, task_queue: str | None = None) -> Awaitable[O]:
        call: Any = workflow.execute_activity(
            act.name,
            arg,
            result_type=act.result,
            task_queue=task_queue,
            start_to_close_timeout=self.start_to_close,
            heartbeat_timeout=self.heartbeat,
            retry_policy=self.retry,
            cancellation_type=self.cancellation,
        )
        return cast(Awaitable[O], call)


# Every profile has a heartbeat timeout (activities heartbeat while they block), so the
# work of a worker killed mid-activity is retried elsewhere within seconds, not minutes.
#
# Bookkeeping on the nodes (start a detached process, kill one): fast and idempotent.
QUICK = CallProfile(
    start_to_close=timedelta(minutes=5),
    heartbeat=timedelta(seconds=10),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=10)),
)
# Creating, starting and deleting nodes: slow provider calls, a bounded number of tries
# (a provider that refuses five times is reported, not retried forever).
PROVISION = CallProfile(
    start_to_close=timedelta(minutes=15),
    heartbeat=timedelta(seconds=10),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5),
    # A cancelled launch is waited for, so the cleanup after it sees every node it made.
    cancellation=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
)
# Copying files: long, so it heartbeats and a dead worker's copy is resumed elsewhere.
SYNC = CallProfile(
    start_to_close=timedelta(hours=2),
    heartbeat=timedelta(seconds=10),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5),
)
# A watcher heartbeats every round; when its worker dies, the heartbeat timeout hands the
# watch to another worker within seconds while the jobs run on, detached.
WATCH = CallProfile(
    start_to_close=timedelta(days=3650),
    heartbeat=timedelta(seconds=10),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=5)),
)
# Rebuilding the catalog from the clouds' APIs: minutes of paged listings per cloud; a
# failed cloud is reported in the result (its old copy stays), so one try is retried.
REFRESH = CallProfile(
    start_to_close=timedelta(minutes=30),
    heartbeat=timedelta(seconds=30),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=2),
)
# Asked by a waiting client (read logs, check): a few tries, then the client hears why.
CLIENT = CallProfile(
    start_to_close=timedelta(minutes=2),
    heartbeat=timedelta(seconds=10),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=2), maximum_attempts=3),
)
