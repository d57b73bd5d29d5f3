"""The workflows' pure decisions, without Temporal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from skyloom.activities.models import CandidatePlan, Offer, PlanResult
from skyloom.workflows import policies
from skyloom.workflows.models import AutostopConfig, JobRecord, JobSpec, JobStatus
from skyloom.workflows.policies import NO_OFFER, failover_table, order_placements

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(i: int, status: JobStatus) -> JobRecord:
    return JobRecord(id=i, status=status, submitted_at=T0, spec=JobSpec())


def test_next_job_is_oldest_pending_and_only_when_nothing_runs():
    assert (
        policies.next_job(
            [job(1, JobStatus.SUCCEEDED), job(2, JobStatus.PENDING), job(3, JobStatus.PENDING)]
        ).id
        == 2
    )
    assert policies.next_job([job(1, JobStatus.RUNNING), job(2, JobStatus.PENDING)]) is None
    assert policies.next_job([job(1, JobStatus.SETTING_UP), job(2, JobStatus.PENDING)]) is None
    assert policies.next_job([job(1, JobStatus.CANCELLED)]) is None


def test_autostop_deadline_counts_from_last_activity():
    cfg = AutostopConfig(idle_minutes=5)
    assert policies.autostop_deadline(cfg, [], T0) == T0 + timedelta(minutes=5)
    assert policies.autostop_deadline(cfg, [job(1, JobStatus.FAILED)], T0) == T0 + timedelta(
        minutes=5
    )


def test_autostop_never_fires_while_busy_or_off():
    cfg = AutostopConfig(idle_minutes=0)
    for busy in (JobStatus.PENDING, JobStatus.SETTING_UP, JobStatus.RUNNING):
        assert policies.autostop_deadline(cfg, [job(1, busy)], T0) is None
    assert policies.autostop_deadline(AutostopConfig(), [], T0) is None
    assert policies.autostop_deadline(AutostopConfig(idle_minutes=-1), [], T0) is None
    assert policies.autostop_deadline(cfg, [], None) is None


def test_trim_history_keeps_live_jobs_and_newest_finished():
    jobs = [job(i, JobStatus.SUCCEEDED) for i in range(1, 6)] + [job(6, JobStatus.PENDING)]
    kept = policies.trim_history(jobs, keep_finished=2)
    assert [j.id for j in kept] == [4, 5, 6]
    assert policies.trim_history(jobs, keep_finished=10) == jobs


# ---- placements ------------------------------------------------------------------------


def _plan(*cands: list[float] | str) -> PlanResult:
    """Each candidate: its offers' prices, or an error kind when the plan refused it."""
    out = []
    for i, c in enumerate(cands):
        if isinstance(c, str):
            out.append(CandidatePlan(candidate=i, infra=f"c{i}", error_kind=c, error="why"))
        else:
            offers = [
                Offer(infra=f"c{i}", region=f"r{j}", price_per_hour=p) for j, p in enumerate(c)
            ]
            out.append(CandidatePlan(candidate=i, infra=f"c{i}", offers=offers))
    return PlanResult(candidates=out)


def test_ordered_keeps_the_candidates_order_and_any_of_goes_cheapest_first():
    plan = _plan([3.0, 1.0], [2.0])
    ordered, _ = order_placements(plan, ordered=True)
    assert [(p.candidate, p.offer.price_per_hour) for p in ordered] == [
        (0, 1.0),
        (0, 3.0),
        (1, 2.0),
    ]
    any_of, _ = order_placements(plan, ordered=False)
    assert [p.offer.price_per_hour for p in any_of] == [1.0, 2.0, 3.0]


def test_zero_cost_offers_keep_the_given_order():
    placements, _ = order_placements(_plan([0.0], [0.0], [0.0]), ordered=False)
    assert [p.candidate for p in placements] == [0, 1, 2]


def test_refused_candidates_become_rows_of_the_table():
    placements, refused = order_placements(_plan("InvalidSpec", [], [1.0]), ordered=False)
    assert [p.candidate for p in placements] == [2]
    assert [(a.infra, a.kind) for a in refused] == [("c0", "InvalidSpec"), ("c1", NO_OFFER)]
    assert "c0: InvalidSpec: why" in failover_table(refused)


@given(
    st.lists(
        st.one_of(st.lists(st.floats(0, 100), max_size=4), st.just("NoCapacity")),
        max_size=5,
    ),
    st.booleans(),
)
def test_every_offer_is_tried_once_and_any_of_is_never_dearer_first(cands, ordered):
    plan = _plan(*cands)
    placements, refused = order_placements(plan, ordered)
    offers = sum(len(c) for c in cands if not isinstance(c, str))
    assert len(placements) == offers
    assert len(refused) == sum(1 for c in cands if isinstance(c, str) or not c)
    prices = [p.offer.price_per_hour for p in placements]
    if not ordered:
        assert prices == sorted(prices)
    else:
        assert [p.candidate for p in placements] == sorted(p.candidate for p in placements)
