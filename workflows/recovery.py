"""Managed-job recovery decisions, as SkyPilot defines `resources.job_recovery`.

Pure functions (no Temporal, no I/O): the managed-job workflow asks `decide` what to do
when an attempt ends and `launch_order` where to launch next.

- Preemption is always recovered; it never counts against `max_restarts_on_errors`.
- A user-code failure whose exit code is in `recover_on_exit_codes` is recovered too,
  without counting; any other failure restarts while `max_restarts_on_errors` allows.
- A setup failure ends the job (FAILED_SETUP); so does finding no resources anywhere.
- EAGER_NEXT_REGION (the default) moves to the next candidate after a preemption;
  FAILOVER tries the same place again first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Strategy(StrEnum):
    FAILOVER = "FAILOVER"
    EAGER_NEXT_REGION = "EAGER_NEXT_REGION"


class RecoveryPolicy(BaseModel):
    strategy: Strategy = Strategy.EAGER_NEXT_REGION
    max_restarts_on_errors: int = 0
    recover_on_exit_codes: list[int] = Field(default_factory=list)


class Ending(StrEnum):
    """How one attempt (one cluster's run of the task) ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # user code exited non-zero
    FAILED_SETUP = "FAILED_SETUP"
    PREEMPTED = "PREEMPTED"  # the nodes went away under the job


class Action(StrEnum):
    FINISH = "FINISH"  # the job is over, with `status`
    RECOVER = "RECOVER"  # new cluster, same task id; does not count as a restart
    RESTART = "RESTART"  # new cluster after a user error; counts as a restart


@dataclass(frozen=True)
class Decision:
    action: Action
    # Final job status when action is FINISH (a ManagedJobStatus value).
    status: str | None = None
    # Launch elsewhere first (EAGER_NEXT_REGION after a preemption).
    move_on: bool = False
    why: str = ""


def decide(
    policy: RecoveryPolicy,
    ending: Ending,
    exit_codes: Sequence[int | None] = (),
    restarts: int = 0,
) -> Decision:
    """What to do after an attempt ended; `restarts` is how many RESTARTs came before."""
    if ending is Ending.SUCCEEDED:
        return Decision(Action.FINISH, "SUCCEEDED")
    if ending is Ending.PREEMPTED:
        return Decision(
            Action.RECOVER,
            move_on=policy.strategy is Strategy.EAGER_NEXT_REGION,
            why="preempted",
        )
    if ending is Ending.FAILED_SETUP:
        return Decision(Action.FINISH, "FAILED_SETUP", why="setup failed")
    codes = [c for c in exit_codes if c not in (0, None)]
    if (
        codes
        and policy.recover_on_exit_codes
        and all(c in policy.recover_on_exit_codes for c in codes)
    ):
        return Decision(Action.RECOVER, why=f"exit code {codes[0]} is in recover_on_exit_codes")
    if restarts < policy.max_restarts_on_errors:
        return Decision(
            Action.RESTART,
            why=f"user code failed; restart {restarts + 1} of {policy.max_restarts_on_errors}",
        )
    code = codes[0] if codes else None
    return Decision(Action.FINISH, "FAILED", why=f"user code failed (exit code {code})")


def launch_order(candidates: Sequence[T], last: int | None, move_on: bool) -> list[int]:
    """Indexes of candidates in the order to try; `last` is where the job last ran."""
    n = len(candidates)
    if last is None or n == 0:
        return list(range(n))
    start = (last + 1) % n if move_on else last
    return [(start + i) % n for i in range(n)]
