"""Activity call profiles shared by the workflows.

Each profile is the timeout and retry contract of one kind of activity; workflows call
activities by name (so workflow code never imports activity code) through a profile.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType


@dataclass(frozen=True)
class CallProfile:
    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None
    cancellation: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL

    def run(self, name: str, arg: object, result_type: type | None = None) -> Awaitable[Any]:
        return workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=self.start_to_close,
            heartbeat_timeout=self.heartbeat,
            retry_policy=self.retry,
            cancellation_type=self.cancellation,
        )


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
# A watcher heartbeats every poll; when its worker dies, the heartbeat timeout hands the
# watch to another worker within seconds while the job runs on, detached.
WATCH = CallProfile(
    start_to_close=timedelta(days=365),
    heartbeat=timedelta(seconds=10),
    retry=RetryPolicy(maximum_interval=timedelta(seconds=5)),
)
