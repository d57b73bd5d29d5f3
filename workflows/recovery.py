"""Managed-job recovery decisions, as SkyPilot defines `resources.job_recovery`.

Pure functions (no Temporal, no I/O): the managed-job workflow asks `decide` what to do
when an attempt ends and `launch_order` where to launch next.

- Preemption is always recovered; it never counts against `max_restarts_on_errors`.
- A user-code failure whose exit code is in `recover_on_exit_codes` is recovered too,
  without counting; any other failure restarts while `max_restarts_on_errors` allows.
- A setup failure ends the job (FAILED_SETUP); so does finding no resources anywhere.
- EAGER_NEXT_REGION (the default) moves to another region after a preemption;
  FAILOVER tries the same place again first, then its region, then the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field


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


def launch_order(wheres: Sequence[str], last: str | None, move_on: bool) -> list[int]:
    """Indexes of the plan's placements (each `cloud/region/zone`, cheapest first) in
    the order to try, after the job last ran at `last` (None: a first launch).

    As SkyPilot's strategies: EAGER_NEXT_REGION (`move_on`) tries every placement outside
    the last region first, then the region's other zones, the last place itself last;
    FAILOVER the last place itself, then the rest of its region, then the others. An SSH
    pool or the local machine is a region of its own."""
    n = len(wheres)
    if last is None or n == 0:
        return list(range(n))
    region = _region(last)
    same = [i for i, w in enumerate(wheres) if _region(w) == region]
    others = [i for i in range(n) if i not in same]
    exact = [i for i in same if wheres[i] == last]
    near = [i for i in same if i not in exact]
    return others + near + exact if move_on else exact + near + others


def _region(where: str) -> str:
    return "/".join(where.split("/")[:2])
