"""Managed-job recovery policy: every branch of SkyPilot's job_recovery, as plain calls."""

from __future__ import annotations

import pytest
from skyloom.workflows.recovery import (
    Action,
    Ending,
    RecoveryPolicy,
    Strategy,
    decide,
    launch_order,
)

DEFAULT = RecoveryPolicy()


def test_success_finishes():
    d = decide(DEFAULT, Ending.SUCCEEDED, [0, 0])
    assert (d.action, d.status) == (Action.FINISH, "SUCCEEDED")


@pytest.mark.parametrize("restarts", [0, 5, 100])
def test_preemption_is_always_recovered_and_never_counted(restarts: int):
    d = decide(DEFAULT, Ending.PREEMPTED, [], restarts=restarts)
    assert d.action is Action.RECOVER and d.move_on
    d = decide(RecoveryPolicy(strategy=Strategy.FAILOVER), Ending.PREEMPTED, [])
    assert d.action is Action.RECOVER and not d.move_on


def test_user_failure_ends_the_job_by_default():
    d = decide(DEFAULT, Ending.FAILED, [0, 3])
    assert (d.action, d.status) == (Action.FINISH, "FAILED")
    assert "exit code 3" in d.why


def test_user_failure_restarts_up_to_the_limit():
    p = RecoveryPolicy(max_restarts_on_errors=2)
    assert decide(p, Ending.FAILED, [1], restarts=0).action is Action.RESTART
    assert decide(p, Ending.FAILED, [1], restarts=1).action is Action.RESTART
    assert decide(p, Ending.FAILED, [1], restarts=2).status == "FAILED"


def test_listed_exit_codes_recover_without_counting():
    p = RecoveryPolicy(recover_on_exit_codes=[33, 34])
    assert decide(p, Ending.FAILED, [33], restarts=50).action is Action.RECOVER
    assert decide(p, Ending.FAILED, [0, 34], restarts=50).action is Action.RECOVER
    # A rank failing with an unlisted code is a user error.
    assert decide(p, Ending.FAILED, [33, 1]).status == "FAILED"


def test_setup_failure_ends_the_job():
    p = RecoveryPolicy(max_restarts_on_errors=3)
    assert decide(p, Ending.FAILED_SETUP, [1]).status == "FAILED_SETUP"


def test_launch_order_moves_on_or_retries_in_place():
    wheres = ["aws/us-east-1/a", "aws/us-east-1/b", "gcp/us-central1/c", "aws/us-west-2/d"]
    assert launch_order(wheres, None, move_on=True) == [0, 1, 2, 3]
    # EAGER_NEXT_REGION: every other region first (cheapest first), then the region's
    # other zones, the preempted place last.
    assert launch_order(wheres, "aws/us-east-1/b", move_on=True) == [2, 3, 0, 1]
    assert launch_order(wheres, "aws/us-east-1/a", move_on=True) == [2, 3, 1, 0]
    # FAILOVER: the same place, then its region, then the rest.
    assert launch_order(wheres, "aws/us-east-1/b", move_on=False) == [1, 0, 2, 3]
    # A pool or the local machine is a region of its own.
    assert launch_order(["ssh/a", "ssh/b", "local"], "ssh/b", move_on=True) == [0, 2, 1]
    assert launch_order(["ssh/a", "ssh/b"], "ssh/gone", move_on=False) == [0, 1]
    assert launch_order([], "local", move_on=True) == []
