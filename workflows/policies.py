"""Pure decisions the workflows make: which job runs next, when autostop fires, what a
finished phase means, and in which order placements are tried. No Temporal, no I/O:
tested as plain functions.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from skyloom.activities.models import Candidate, LaunchAttempt, Offer, Placement, PlanResult
from skyloom.workflows.models import AutostopConfig, JobRecord, JobStatus

# The kind of a failover-table row for a candidate that had no offer at all.
NO_OFFER = "NoOffer"
# Infras where a candidate is itself the one placement (no region or zone to choose, no
# price to compare): launching there needs no offers, only the provider's own checks.
SELF_PLACING = ("local", "ssh", "k8s", "kubernetes")

ACTIVE = (JobStatus.SETTING_UP, JobStatus.RUNNING)


def next_job(jobs: list[JobRecord]) -> JobRecord | None:
    """FIFO: the oldest PENDING job, only when nothing is running (one job owns the nodes)."""
    if any(j.status in ACTIVE for j in jobs):
        return None
    return next((j for j in jobs if j.status is JobStatus.PENDING), None)


def is_idle(jobs: list[JobRecord]) -> bool:
    return not any(j.status is JobStatus.PENDING or j.status in ACTIVE for j in jobs)


def autostop_deadline(
    cfg: AutostopConfig, jobs: list[JobRecord], last_active: datetime | None
) -> datetime | None:
    """When the idle cluster should stop, or None when autostop is off or it is busy."""
    if cfg.idle_minutes is None or cfg.idle_minutes < 0 or last_active is None:
        return None
    if not is_idle(jobs):
        return None
    return last_active + timedelta(minutes=cfg.idle_minutes)


def trim_history(jobs: list[JobRecord], keep_finished: int) -> list[JobRecord]:
    """Bound the state carried across continue-as-new: drop the oldest finished jobs."""
    finished = [j for j in jobs if j.status.terminal]
    if len(finished) <= keep_finished:
        return jobs
    drop = {j.id for j in finished[: len(finished) - keep_finished]}
    return [j for j in jobs if j.id not in drop]


def direct_placements(candidates: list[Candidate]) -> list[Placement] | None:
    """The placements of candidates that all place themselves (in the given order, which
    is also cheapest first: they are free), or None when some need the providers' offers
    (a cloud's regions and zones, priced)."""
    if not all(c.infra.split("/", 1)[0].lower() in SELF_PLACING for c in candidates):
        return None
    return [Placement(candidate=i, offer=Offer(infra=c.infra)) for i, c in enumerate(candidates)]


def order_placements(
    plan: PlanResult, ordered: bool
) -> tuple[list[Placement], list[LaunchAttempt]]:
    """The placements to try, in order, and the candidates the plan refused (as rows of
    the failover table).

    `ordered`: candidates in the order given, each one's offers cheapest first. `any_of`
    (and a single candidate): every offer cheapest first, the given order breaking ties;
    with no catalog yet (local and SSH offer zero-cost nodes) that is the given order.
    """
    refused: list[LaunchAttempt] = []
    rows: list[tuple[int, int, Offer]] = []
    for cp in sorted(plan.candidates, key=lambda c: c.candidate):
        if cp.error_kind is not None or not cp.offers:
            refused.append(
                LaunchAttempt(
                    infra=cp.infra,
                    kind=cp.error_kind or NO_OFFER,
                    message=cp.error or "no offer fits the resources",
                )
            )
            continue
        by_price = sorted(enumerate(cp.offers), key=lambda io: (io[1].price_per_hour, io[0]))
        rows.extend((cp.candidate, j, offer) for j, offer in by_price)
    if ordered:
        rows.sort(key=lambda r: (r[0], r[2].price_per_hour, r[1]))
    else:
        rows.sort(key=lambda r: (r[2].price_per_hour, r[0], r[1]))
    return [Placement(candidate=c, offer=o) for c, _, o in rows], refused


def failover_table(attempts: list[LaunchAttempt]) -> str:
    """The placements tried and why each gave no nodes, one row each with the provider's
    detail indented under it (SkyPilot prints its failover history the same way)."""
    lines = []
    for a in attempts:
        where = "/".join(p for p in (a.infra, a.region, a.zone) if p)
        what = f" {a.instance_type}" if a.instance_type else ""
        first, *rest = a.message.strip().splitlines() or [""]
        lines.append(f"  {where}{what}: {a.kind}: {first}")
        lines.extend(f"      {line.strip()}" for line in rest if line.strip())
    return "\n".join(lines)
