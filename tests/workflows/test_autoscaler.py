"""The serving autoscaler's pure functions, without Temporal: fixed UTC times, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skyloom.workflows import autoscaler as a
from skyloom.workflows.autoscaler import (
    MIN_QPS_SPAN_SECONDS,
    MIN_SAMPLE_SPACING_SECONDS,
    QPS_WINDOW_SECONDS,
    ScalePolicy,
    ScaleState,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Autoscaling between 1 and 10 replicas at 10 QPS each, SkyServe's default delays.
P = ScalePolicy(min_replicas=1, max_replicas=10, target_qps_per_replica=10)


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def at_rps(state: ScaleState, now: datetime, rps: float) -> ScaleState:
    """`state` with a full window behind it whose rate at `now` is exactly `rps`."""
    return state.model_copy(
        update={
            "samples": [(now, round(rps * QPS_WINDOW_SECONDS))] if rps else [],
            "observed_since": now - timedelta(days=1),
        }
    )


# --- the policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"min_replicas": -1}, "min_replicas"),
        ({"min_replicas": 1, "max_replicas": -1}, "max_replicas"),
        ({"min_replicas": 1, "target_qps_per_replica": 0}, "target_qps_per_replica"),
        ({"min_replicas": 1, "target_qps_per_replica": -2.5}, "target_qps_per_replica"),
        ({"min_replicas": 1, "target_qps_per_replica": float("nan")}, "target_qps_per_replica"),
        ({"min_replicas": 1, "upscale_delay_seconds": -1}, "upscale_delay_seconds"),
        ({"min_replicas": 1, "downscale_delay_seconds": -0.5}, "downscale_delay_seconds"),
        ({"min_replicas": 1, "downscale_delay_seconds": float("inf")}, "downscale_delay_seconds"),
        (
            {"min_replicas": 1, "base_ondemand_fallback_replicas": -1},
            "base_ondemand_fallback_replicas",
        ),
        ({"min_replicas": 1, "num_overprovision": -1}, "num_overprovision"),
    ],
)
def test_policy_refuses_bad_fields_naming_them(fields, field):
    with pytest.raises(ValueError, match=field):
        ScalePolicy(**fields)


def test_policy_defaults_are_skyserves():
    p = ScalePolicy(min_replicas=2)
    assert p.max_replicas is None and p.target_qps_per_replica is None
    assert p.upscale_delay_seconds == 300 and p.downscale_delay_seconds == 1200
    assert p.base_ondemand_fallback_replicas == 0 and not p.dynamic_ondemand_fallback
    assert p.num_overprovision == 0


@pytest.mark.parametrize(
    ("policy", "upper", "autoscaling"),
    [
        (ScalePolicy.fixed(3), 3, False),
        (ScalePolicy(min_replicas=1, max_replicas=4), 1, False),
        (ScalePolicy(min_replicas=2, target_qps_per_replica=5), 2, True),
        (P, 10, True),
    ],
)
def test_upper_bound_is_min_unless_autoscaling_with_a_max(policy, upper, autoscaling):
    assert policy.upper == upper
    assert policy.autoscaling is autoscaling


def test_fixed_is_replicas_n():
    p = ScalePolicy.fixed(4)
    assert (p.min_replicas, p.max_replicas, p.target_qps_per_replica) == (4, None, None)
    assert a.initial_state(p).target == 4


def test_initial_state_starts_at_min_with_nothing_pending():
    s = a.initial_state(P)
    assert s == ScaleState(target=1)
    assert a.next_check(P, s, T0) is None
    assert a.qps(s, T0) == 0.0


def test_state_survives_json_for_continue_as_new():
    s = a.decide(P, a.record(a.record(a.initial_state(P), t(5), 900), t(10), 900), t(10))
    assert s.upscale_since is not None
    assert ScaleState.model_validate_json(s.model_dump_json()) == s
    assert ScalePolicy.model_validate_json(P.model_dump_json()) == P


# --- recording and QPS ------------------------------------------------------------------


def test_a_known_start_of_counting_sets_the_qps_divisor():
    s = a.record(a.initial_state(P, observed_since=t(0)), t(5), 150)
    assert s.observed_since == t(0)
    assert a.qps(s, t(20)) == pytest.approx(150 / 20)
    # Without it the first report's time is the start, and the floor applies.
    assert a.qps(a.record(a.initial_state(P), t(5), 150), t(5)) == 150 / MIN_QPS_SPAN_SECONDS


def test_record_drops_samples_a_window_older_than_the_newest():
    s = a.initial_state(P)
    for sec in (0, 10, 30, 59, 60, 61):
        s = a.record(s, t(sec), 1)
    # At 61 the one at 0 ended more than a window ago; the one at 1 would be exactly on it.
    assert [at for at, _ in s.samples] == [t(10), t(30), t(59), t(60), t(61)]
    s = a.record(s, t(120), 1)
    assert [at for at, _ in s.samples] == [t(61), t(120)]
    assert a.record(s, t(200), 0).samples == []


def test_record_places_late_reports_and_drops_ones_already_out_of_the_window():
    s = a.record(a.record(a.initial_state(P), t(100), 1), t(90), 2)
    assert s.samples == [(t(90), 2), (t(100), 1)]
    assert s.observed_since == t(90)
    assert a.record(s, t(30), 5).samples == s.samples


def test_record_merges_reports_closer_than_the_spacing_into_the_earlier_one():
    s = a.initial_state(P)
    for step in range(10):
        s = a.record(s, t(step * 0.25), 1)
    # Buckets anchored at 0, 1, 2: the anchor keeps its time, so nothing outlives a window.
    assert s.samples == [(t(0), 4), (t(1), 4), (t(2), 2)]


def test_record_counts_zero_and_negative_reports_as_time_observed_only():
    s = a.record(a.initial_state(P), t(5), 0)
    assert s.samples == [] and s.observed_since == t(5)
    s = a.record(s, t(10), -40)
    assert s.samples == [] and s.observed_since == t(5)


@pytest.mark.parametrize(
    ("reports", "now", "expected"),
    [
        # Nothing observed yet.
        ([], 0, 0.0),
        # One burst right after start: divided by the minimum span, not by ~0 seconds.
        ([(0, 100)], 0, 100 / MIN_QPS_SPAN_SECONDS),
        ([(0, 100)], 4, 100 / MIN_QPS_SPAN_SECONDS),
        # Less than a window observed: divided by the time observed.
        ([(0, 100), (20, 100)], 20, 200 / 20),
        ([(0, 50), (5, 50), (40, 50)], 40, 150 / 40),
        # A whole window and more observed: divided by the window.
        ([(0, 600), (40, 600), (90, 600)], 90, 1200 / QPS_WINDOW_SECONDS),
        # One that ended exactly a window ago is out.
        ([(0, 600), (30, 600), (90, 600)], 90, 600 / QPS_WINDOW_SECONDS),
        # Idle time counts: the reports age out even when no new one comes.
        ([(0, 600), (30, 600)], 89, 600 / QPS_WINDOW_SECONDS),
        ([(0, 600), (30, 600)], 90, 0.0),
        ([(0, 600), (30, 600)], 1000, 0.0),
    ],
)
def test_qps_over_the_window(reports, now, expected):
    s = a.initial_state(P)
    for sec, n in reports:
        s = a.record(s, t(sec), n)
    assert a.qps(s, t(now)) == pytest.approx(expected)


def test_next_expiry_is_when_the_oldest_counted_sample_ages_out():
    s = a.record(a.record(a.initial_state(P), t(0), 5), t(30), 5)
    assert a.next_expiry(s, t(10)) == t(60)
    assert a.next_expiry(s, t(61)) == t(90)
    assert a.next_expiry(s, t(90)) is None
    assert a.next_expiry(a.initial_state(P), t(0)) is None


# --- the target the load asks for -------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "rps", "expected"),
    [
        (P, 0, 1),
        (P, 10, 1),
        (P, 10.5, 2),
        (P, 25, 3),
        (P, 100, 10),
        (P, 10_000, 10),
        # 21 QPS at 0.7 each is 30 replicas, though the float quotient is 30.000000000000004.
        (ScalePolicy(min_replicas=0, max_replicas=100, target_qps_per_replica=0.7), 21, 30),
        (ScalePolicy(min_replicas=0, max_replicas=100, target_qps_per_replica=0.7), 21.01, 31),
        (ScalePolicy(min_replicas=0, max_replicas=5, target_qps_per_replica=1), 0, 0),
        # No autoscaling: min_replicas whatever the load.
        (ScalePolicy.fixed(2), 10_000, 2),
        (ScalePolicy(min_replicas=1, max_replicas=5), 10_000, 1),
        # A target QPS but no max: fixed at min.
        (ScalePolicy(min_replicas=2, target_qps_per_replica=1), 10_000, 2),
    ],
)
def test_wanted_is_ceil_of_qps_per_target_within_bounds(policy, rps, expected):
    s = at_rps(a.initial_state(policy), t(0), rps)
    assert a.wanted(policy, s, t(0)) == expected


# --- decisions over time ----------------------------------------------------------------

# (name, policy, starting target, [(seconds, rps, target after decide)]).
SCENARIOS = [
    (
        "up only after the delay, to the computed target",
        P,
        1,
        [(0, 25, 1), (100, 25, 1), (299, 35, 1), (300, 35, 4), (310, 35, 4)],
    ),
    (
        "huge load waits out the delay too",
        P,
        1,
        [(0, 1e6, 1), (299.9, 1e6, 1), (300, 1e6, 10)],
    ),
    (
        "a dip to the target restarts the upscale delay",
        P,
        1,
        [(0, 25, 1), (200, 5, 1), (250, 25, 1), (300, 25, 1), (549, 25, 1), (550, 25, 3)],
    ),
    (
        "down only after the downscale delay",
        P,
        5,
        [(0, 5, 5), (600, 15, 5), (1199, 5, 5), (1200, 5, 1)],
    ),
    (
        "a rise above the target restarts the downscale delay",
        P,
        5,
        [(0, 5, 5), (600, 80, 5), (700, 5, 5), (1800, 5, 5), (1900, 5, 1)],
    ),
    (
        "load back at the target cancels the pending downscale",
        P,
        5,
        [(0, 5, 5), (100, 45, 5), (1200, 5, 5), (2399, 5, 5), (2400, 5, 1)],
    ),
    (
        "a new high while an upscale is pending does not restart it",
        P,
        1,
        [(0, 15, 1), (200, 95, 1), (300, 95, 10)],
    ),
    (
        "up twice: each step waits its own delay",
        P,
        1,
        [(0, 25, 1), (300, 25, 3), (310, 55, 3), (609, 55, 3), (610, 55, 6)],
    ),
    (
        "from zero replicas at once (no replica serves while a delay runs)",
        ScalePolicy(min_replicas=0, max_replicas=5, target_qps_per_replica=10),
        0,
        [(0, 0, 0), (10, 25, 3), (20, 0, 3), (1219, 0, 3), (1220, 0, 0)],
    ),
    (
        "zero delays act at once",
        P.model_copy(update={"upscale_delay_seconds": 0, "downscale_delay_seconds": 0}),
        1,
        [(0, 25, 3), (1, 5, 1), (2, 55, 6)],
    ),
    (
        "a fixed policy never moves",
        ScalePolicy.fixed(2),
        2,
        [(0, 1e6, 2), (10_000, 1e6, 2), (20_000, 0, 2)],
    ),
    (
        "a target outside the (changed) policy is pulled inside at once",
        P,
        20,
        [(0, 1e6, 10)],
    ),
    (
        "below min is pulled up at once",
        ScalePolicy(min_replicas=3, max_replicas=6, target_qps_per_replica=10),
        1,
        [(0, 0, 3)],
    ),
]


@pytest.mark.parametrize(
    ("policy", "start", "steps"),
    [pytest.param(p, start, steps, id=name) for name, p, start, steps in SCENARIOS],
)
def test_decide_over_time(policy, start, steps):
    s = ScaleState(target=start)
    for sec, rps, expected in steps:
        s = a.decide(policy, at_rps(s, t(sec), rps), t(sec))
        assert s.target == expected, f"at {sec}s, {rps} rps"
        assert a.wanted(policy, s, t(sec)) >= policy.min_replicas


def test_a_dip_resets_upscale_since():
    s = a.decide(P, at_rps(a.initial_state(P), t(0), 25), t(0))
    assert (s.upscale_since, s.downscale_since) == (t(0), None)
    s = a.decide(P, at_rps(s, t(200), 5), t(200))
    assert (s.upscale_since, s.downscale_since) == (None, None)
    s = a.decide(P, at_rps(s, t(250), 25), t(250))
    assert s.upscale_since == t(250)


def test_a_flip_swaps_which_since_is_set():
    s = a.decide(P, at_rps(ScaleState(target=5), t(0), 5), t(0))
    assert (s.upscale_since, s.downscale_since) == (None, t(0))
    s = a.decide(P, at_rps(s, t(10), 80), t(10))
    assert (s.upscale_since, s.downscale_since) == (t(10), None)


def test_real_reports_scale_up_after_the_delay():
    # Reports every 5 s of 150 requests (30 QPS): SkyServe's 300 s from the first one
    # that asked for more.
    s = a.initial_state(P)
    first_pending: datetime | None = None
    for step in range(1, 120):
        now = t(step * 5)
        s = a.decide(P, a.record(s, now, 150), now)
        if first_pending is None:
            first_pending = s.upscale_since
        if first_pending is not None and now < first_pending + timedelta(seconds=300):
            assert s.target == 1
    assert first_pending == t(5)
    assert s.target == 3


def test_traffic_stopping_scales_down_after_the_delay():
    s = a.decide(P, at_rps(ScaleState(target=4), t(0), 35), t(0))
    assert s.target == 4
    # Idle reports (0 requests) keep deciding while the old samples age out.
    for sec in range(5, 1500, 5):
        s = a.decide(P, a.record(s, t(sec), 0), t(sec))
        if sec < 60 + 1200:
            assert s.target == 4
    assert s.target == 1


# --- next_check and retarget ------------------------------------------------------------


def test_next_check_is_when_the_pending_change_is_due():
    s = a.decide(P, at_rps(a.initial_state(P), t(0), 25), t(0))
    assert a.next_check(P, s, t(0)) == t(300)
    assert a.next_check(P, s, t(100)) == t(300)
    # Overdue: now, never a time in the past a timer could not wait for.
    assert a.next_check(P, s, t(400)) == t(400)
    # Deciding at that time with the load unchanged makes the change.
    due = a.next_check(P, s, t(0))
    assert due is not None
    assert a.decide(P, at_rps(s, due, 25), due).target == 3

    down = a.decide(P, at_rps(ScaleState(target=5), t(0), 5), t(0))
    assert a.next_check(P, down, t(0)) == t(1200)


@pytest.mark.parametrize(("start", "rps"), [(1, 0), (1, 10), (3, 25), (5, 45), (10, 500)])
def test_load_at_the_target_leaves_nothing_pending(start, rps):
    pending = ScaleState(target=start, upscale_since=t(-5), downscale_since=None)
    s = a.decide(P, at_rps(pending, t(0), rps), t(0))
    assert (s.target, s.upscale_since, s.downscale_since) == (start, None, None)
    assert a.next_check(P, s, t(0)) is None


def test_next_check_none_for_a_fixed_policy():
    p = ScalePolicy.fixed(3)
    s = a.decide(p, at_rps(a.initial_state(p), t(0), 1e6), t(0))
    assert a.next_check(p, s, t(0)) is None


def test_retarget_applies_a_new_policy_at_once():
    s = a.decide(P, at_rps(ScaleState(target=2), t(0), 5), t(0))
    assert s.downscale_since == t(0)
    wider = ScalePolicy(min_replicas=1, max_replicas=20, target_qps_per_replica=2)
    r = a.retarget(wider, at_rps(s, t(10), 15), t(10))
    assert (r.target, r.upscale_since, r.downscale_since) == (8, None, None)
    assert r.samples == [(t(10), 900)]
    assert a.retarget(ScalePolicy.fixed(4), r, t(10)).target == 4


# --- spot and on-demand -----------------------------------------------------------------


def fallback(base: int = 0, dynamic: bool = False, over: int = 0) -> ScalePolicy:
    return ScalePolicy(
        min_replicas=0,
        max_replicas=10,
        target_qps_per_replica=1,
        base_ondemand_fallback_replicas=base,
        dynamic_ondemand_fallback=dynamic,
        num_overprovision=over,
    )


@pytest.mark.parametrize(
    ("policy", "target", "use_spot", "ready_spot", "expected"),
    [
        # No spot: everything on-demand, fallback settings or not.
        (fallback(), 4, False, 0, (0, 4)),
        (fallback(base=2, dynamic=True), 4, False, 0, (0, 4)),
        # Spot without fallback: all spot, READY or not.
        (fallback(), 4, True, 0, (4, 0)),
        (fallback(), 4, True, 4, (4, 0)),
        # Base on-demand replicas, the rest spot.
        (fallback(base=1), 4, True, 0, (3, 1)),
        (fallback(base=1), 4, True, 3, (3, 1)),
        # Base capped at the target.
        (fallback(base=5), 3, True, 0, (0, 3)),
        (fallback(base=2), 0, True, 0, (0, 0)),
        # Dynamic: on-demand stands in for every wanted spot replica not READY...
        (fallback(dynamic=True), 4, True, 0, (4, 4)),
        (fallback(dynamic=True), 4, True, 1, (4, 3)),
        # ...and goes away as they become READY (more READY than wanted: no negative).
        (fallback(dynamic=True), 4, True, 4, (4, 0)),
        (fallback(dynamic=True), 4, True, 6, (4, 0)),
        # Both.
        (fallback(base=1, dynamic=True), 4, True, 0, (3, 4)),
        (fallback(base=1, dynamic=True), 4, True, 2, (3, 2)),
        (fallback(base=1, dynamic=True), 4, True, 3, (3, 1)),
        # Overprovisioning adds spot replicas; on-demand never exceeds the target.
        (fallback(over=2), 3, False, 0, (0, 5)),
        (fallback(over=2), 3, True, 0, (5, 0)),
        (fallback(base=1, dynamic=True, over=2), 3, True, 0, (4, 3)),
        (fallback(base=1, dynamic=True, over=2), 3, True, 3, (4, 2)),
    ],
)
def test_split(policy, target, use_spot, ready_spot, expected):
    assert a.split(policy, target, use_spot, ready_spot) == expected


@pytest.mark.parametrize(("target", "ready_spot"), [(-1, 0), (1, -1)])
def test_split_refuses_negative_counts(target, ready_spot):
    with pytest.raises(ValueError, match="target" if target < 0 else "ready_spot"):
        a.split(fallback(), target, True, ready_spot)


# --- properties -------------------------------------------------------------------------

delays = st.floats(min_value=0, max_value=2000, allow_nan=False)


@st.composite
def policies(draw: st.DrawFn) -> ScalePolicy:
    lo = draw(st.integers(0, 5))
    return ScalePolicy(
        min_replicas=lo,
        max_replicas=draw(st.none() | st.integers(lo, lo + 10)),
        target_qps_per_replica=draw(
            st.none() | st.floats(min_value=0.01, max_value=1000, allow_nan=False)
        ),
        upscale_delay_seconds=draw(delays),
        downscale_delay_seconds=draw(delays),
        base_ondemand_fallback_replicas=draw(st.integers(0, 5)),
        dynamic_ondemand_fallback=draw(st.booleans()),
        num_overprovision=draw(st.integers(0, 3)),
    )


# (seconds since the previous report, requests in it).
reports = st.lists(
    st.tuples(st.floats(min_value=0, max_value=400, allow_nan=False), st.integers(-5, 10**6)),
    max_size=40,
)


@given(policies(), reports)
def test_target_always_within_bounds(policy, events):
    s = a.initial_state(policy)
    now = T0
    for gap, n in events:
        now += timedelta(seconds=gap)
        s = a.decide(policy, a.record(s, now, n), now)
        assert policy.min_replicas <= s.target <= policy.upper
        assert not (s.upscale_since and s.downscale_since)
        assert (a.next_check(policy, s, now) is None) == (
            s.upscale_since is None and s.downscale_since is None
        )


@given(policies(), reports)
def test_samples_stay_sorted_recent_and_bounded(policy, events):
    s = a.initial_state(policy)
    now = T0
    for gap, n in events:
        now += timedelta(seconds=gap)
        s = a.record(s, now, n)
        times = [at for at, _ in s.samples]
        assert times == sorted(times)
        assert all(at > now - timedelta(seconds=QPS_WINDOW_SECONDS) for at in times)
        assert all(n > 0 for _, n in s.samples)
        assert len(times) <= QPS_WINDOW_SECONDS / MIN_SAMPLE_SPACING_SECONDS + 1
        assert a.qps(s, now) >= 0


@given(
    lo=st.integers(1, 5),
    extra=st.integers(1, 10),
    qps_target=st.floats(min_value=0.1, max_value=100, allow_nan=False),
    delay=st.floats(min_value=1, max_value=2000, allow_nan=False),
    offsets=st.lists(st.floats(min_value=0, max_value=0.999), max_size=20),
)
def test_no_scale_up_before_the_delay_then_exactly_after(lo, extra, qps_target, delay, offsets):
    policy = ScalePolicy(
        min_replicas=lo,
        max_replicas=lo + extra,
        target_qps_per_replica=qps_target,
        upscale_delay_seconds=delay,
    )
    huge = 10**9
    s = a.decide(policy, a.record(a.initial_state(policy), T0, huge), T0)
    assert s.upscale_since == T0
    for f in sorted(offsets):
        now = T0 + timedelta(seconds=f * delay)
        s = a.decide(policy, a.record(s, now, huge), now)
        assert s.target == lo
    due = a.next_check(policy, s, T0)
    assert due == T0 + timedelta(seconds=delay)
    s = a.decide(policy, a.record(s, due, huge), due)
    assert s.target == lo + extra


@given(
    lo=st.integers(0, 5),
    extra=st.integers(1, 10),
    delay=st.floats(min_value=1, max_value=5000, allow_nan=False),
)
def test_downscale_exactly_after_its_delay(lo, extra, delay):
    policy = ScalePolicy(
        min_replicas=lo,
        max_replicas=lo + extra,
        target_qps_per_replica=1,
        downscale_delay_seconds=delay,
    )
    s = a.decide(policy, at_rps(ScaleState(target=lo + extra), T0, 0), T0)
    assert s.downscale_since == T0
    before = T0 + timedelta(seconds=delay) - timedelta(microseconds=1)
    assert a.decide(policy, at_rps(s, before, 0), before).target == lo + extra
    due = T0 + timedelta(seconds=delay)
    assert a.decide(policy, at_rps(s, due, 0), due).target == lo


@given(st.integers(0, 20), reports)
def test_fixed_policy_never_changes(n, events):
    policy = ScalePolicy.fixed(n)
    s = a.initial_state(policy)
    now = T0
    for gap, count in events:
        now += timedelta(seconds=gap)
        s = a.decide(policy, a.record(s, now, count), now)
        assert s.target == n
        assert a.next_check(policy, s, now) is None


@given(
    policies(),
    st.integers(0, 30),
    st.booleans(),
    st.integers(0, 40),
)
def test_split_properties(policy, target, use_spot, ready_spot):
    spot, on_demand = a.split(policy, target, use_spot, ready_spot)
    assert spot >= 0 and on_demand >= 0
    if not use_spot:
        assert (spot, on_demand) == (0, target + policy.num_overprovision)
        return
    assert spot + min(policy.base_ondemand_fallback_replicas, target) == (
        target + policy.num_overprovision
    )
    assert on_demand <= target
    assert on_demand >= min(policy.base_ondemand_fallback_replicas, target)
    if not policy.dynamic_ondemand_fallback:
        assert on_demand == min(policy.base_ondemand_fallback_replicas, target)
    # Every wanted spot replica that is not READY is covered, up to the target.
    if ready_spot >= spot:
        assert on_demand == min(policy.base_ondemand_fallback_replicas, target)


@settings(max_examples=50)
@given(policies(), reports, st.integers(0, 10), st.floats(min_value=0, max_value=1e6))
def test_functions_do_not_change_their_inputs(policy, events, ready_spot, later):
    s = a.initial_state(policy)
    now = T0
    for gap, n in events:
        now += timedelta(seconds=gap)
        s = a.decide(policy, a.record(s, now, n), now)
    now += timedelta(seconds=later)
    policy_before = policy.model_dump()
    state_before = s.model_dump()
    samples_before = list(s.samples)

    a.record(s, now, 5)
    a.record(s, now - timedelta(seconds=30), 5)
    a.decide(policy, s, now)
    a.retarget(policy, s, now)
    a.qps(s, now)
    a.wanted(policy, s, now)
    a.next_check(policy, s, now)
    a.next_expiry(s, now)
    a.split(policy, s.target, True, ready_spot)

    assert policy.model_dump() == policy_before
    assert s.model_dump() == state_before
    assert s.samples == samples_before


def test_models_are_frozen():
    s = a.initial_state(P)
    with pytest.raises(ValueError):
        s.target = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        P.min_replicas = 3  # type: ignore[misc]
