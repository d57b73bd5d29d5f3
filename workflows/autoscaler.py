"""The serving autoscaler: how many replicas a service wants, and how many of them are
spot, from the request counts its load balancer reports. SkyServe's semantics
(`replica_policy`): target = ceil(QPS / target_qps_per_replica) within
[min_replicas, max_replicas], changed only after the load has stayed above (or below)
the current target for the upscale (or downscale) delay.

Pure functions of their arguments: no clock, no I/O, no Temporal. They run inside the
service workflow's sandbox, take `now` from it, and return new models instead of
changing their inputs; `ScaleState` is carried whole through continue-as-new, so it is
small and bounded (one minute of samples).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# QPS is averaged over the last minute, as SkyServe does.
QPS_WINDOW_SECONDS = 60.0
# Until a whole window has been observed, QPS divides by the time observed so far, but
# by no less than this: the first report covers an interval that began before anything
# was observed, and one burst right after start must not look like a huge rate.
MIN_QPS_SPAN_SECONDS = 10.0
# Reports closer together than this are summed into one sample, so a chatty reporter
# cannot grow the state carried through continue-as-new past ~window/spacing entries.
MIN_SAMPLE_SPACING_SECONDS = 1.0
# ceil() of a float quotient like 21 / 0.7 (= 30.000000000000004) would ask for one
# replica too many.
_CEIL_TOLERANCE = 1e-9


class ScalePolicy(BaseModel):
    """A service's `replica_policy` (or `replicas: n`, see `fixed`)."""

    model_config = ConfigDict(frozen=True)

    min_replicas: int = Field(ge=0, description="Replicas kept at all times.")
    max_replicas: int | None = Field(
        None, ge=0, description="Most replicas when autoscaling; None: fixed at min_replicas."
    )
    target_qps_per_replica: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Requests per second one replica should serve; None: no autoscaling.",
    )
    upscale_delay_seconds: float = Field(
        300.0, ge=0, allow_inf_nan=False, description="Load must stay higher this long."
    )
    downscale_delay_seconds: float = Field(
        1200.0, ge=0, allow_inf_nan=False, description="Load must stay lower this long."
    )
    base_ondemand_fallback_replicas: int = Field(
        0, ge=0, description="With spot: replicas that are always on-demand."
    )
    dynamic_ondemand_fallback: bool = Field(
        False, description="With spot: on-demand replicas stand in for spot ones not READY."
    )
    num_overprovision: int = Field(
        0, ge=0, description="Extra replicas run beyond the target (never on-demand fallback)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self

    @classmethod
    def fixed(cls, n: int) -> ScalePolicy:
        """`replicas: n`: always n replicas, whatever the load."""
        return cls(min_replicas=n)

    @property
    def autoscaling(self) -> bool:
        return self.target_qps_per_replica is not None

    @property
    def upper(self) -> int:
        """The most replicas this policy ever asks for (before overprovisioning)."""
        if not self.autoscaling or self.max_replicas is None:
            return self.min_replicas
        return self.max_replicas


class ScaleState(BaseModel):
    """What the autoscaler remembers between reports (and across continue-as-new)."""

    model_config = ConfigDict(frozen=True)

    # The replica count the service runs towards now (before overprovisioning).
    target: int
    # (end of a report's interval, requests served in it), oldest first, within the window.
    samples: list[tuple[datetime, int]] = Field(default_factory=list)
    # Since when the wanted count has been above (below) `target` without a break.
    upscale_since: datetime | None = None
    downscale_since: datetime | None = None
    # When counting began (the first report's time unless initial_state was told): until
    # a window has passed since, QPS divides by the time observed, not the window.
    observed_since: datetime | None = None


def initial_state(policy: ScalePolicy, observed_since: datetime | None = None) -> ScaleState:
    """Starting at min_replicas. `observed_since`: when the load balancer began counting,
    if known; else the first report's time, which leaves that report's own interval out
    of the QPS divisor (MIN_QPS_SPAN_SECONDS bounds the error)."""
    return ScaleState(target=policy.min_replicas, observed_since=observed_since)


def record(state: ScaleState, at: datetime, requests: int) -> ScaleState:
    """Add a report: `requests` served in the interval ending at `at`.

    Samples that ended a window or more before the newest one are dropped. A negative
    count (a load balancer that restarted its counter, turned into a delta) counts as 0.
    """
    requests = max(0, requests)
    observed_since = at if state.observed_since is None else min(state.observed_since, at)
    samples = list(state.samples)
    newest = max([at, *(s_at for s_at, _ in samples)])
    if requests:
        # Reports arrive in order, but a late one goes where it belongs. One less than
        # MIN_SAMPLE_SPACING_SECONDS after the sample before it is added to that sample,
        # which keeps its own time, so a steady stream of close reports cannot keep one
        # sample alive forever.
        i = len(samples)
        while i and samples[i - 1][0] > at:
            i -= 1
        if i and (at - samples[i - 1][0]).total_seconds() < MIN_SAMPLE_SPACING_SECONDS:
            samples[i - 1] = (samples[i - 1][0], samples[i - 1][1] + requests)
        else:
            samples.insert(i, (at, requests))
    cutoff = newest - timedelta(seconds=QPS_WINDOW_SECONDS)
    samples = [(s_at, n) for s_at, n in samples if s_at > cutoff]
    return state.model_copy(update={"samples": samples, "observed_since": observed_since})


def qps(state: ScaleState, now: datetime) -> float:
    """Requests per second over the last QPS_WINDOW_SECONDS before `now`.

    SkyServe always divides by the whole window, which reads a new service's load as
    lower than it is for its first minute. Here the divisor is the time observed so far
    (since the first report), at least MIN_QPS_SPAN_SECONDS and at most the window.
    """
    if state.observed_since is None:
        return 0.0
    cutoff = now - timedelta(seconds=QPS_WINDOW_SECONDS)
    total = sum(n for at, n in state.samples if at > cutoff)
    if not total:
        return 0.0
    observed = (now - state.observed_since).total_seconds()
    span = min(QPS_WINDOW_SECONDS, max(MIN_QPS_SPAN_SECONDS, observed))
    return total / span


def wanted(policy: ScalePolicy, state: ScaleState, now: datetime) -> int:
    """The replica count the load asks for now, before any delay: the policy's bounds
    around ceil(QPS / target_qps_per_replica); min_replicas without autoscaling."""
    if policy.target_qps_per_replica is None:
        return policy.min_replicas
    raw = math.ceil(qps(state, now) / policy.target_qps_per_replica - _CEIL_TOLERANCE)
    return _clamp(policy, raw)


def decide(policy: ScalePolicy, state: ScaleState, now: datetime) -> ScaleState:
    """The state with `target` moved when the delays allow it.

    Call it after every report and when `next_check` comes: a report that finds the
    load back at the target is what ends a pending change. A target outside the
    policy's bounds (the policy changed) is pulled inside at once, and a target of 0
    jumps to what the load asks for at once, as in SkyServe: a service scaled to zero
    has no replica to serve while a delay runs.
    """
    current = _clamp(policy, state.target)
    want = wanted(policy, state, now)
    if current == 0 and want > 0:
        return _settled(state, want)
    if want > current:
        since = state.upscale_since if state.upscale_since is not None else now
        if _elapsed(since, now, policy.upscale_delay_seconds):
            # To what the load asks for now, not one step: the delay already ran.
            return _settled(state, want)
        return state.model_copy(
            update={"target": current, "upscale_since": since, "downscale_since": None}
        )
    if want < current:
        since = state.downscale_since if state.downscale_since is not None else now
        if _elapsed(since, now, policy.downscale_delay_seconds):
            return _settled(state, want)
        return state.model_copy(
            update={"target": current, "upscale_since": None, "downscale_since": since}
        )
    return _settled(state, current)


def retarget(policy: ScalePolicy, state: ScaleState, now: datetime) -> ScaleState:
    """After the service's policy changed (a new version): the target the load asks for
    under the new policy at once, with no pending change, as SkyServe does on update.
    The request samples are kept."""
    return _settled(state, wanted(policy, state, now))


def next_check(policy: ScalePolicy, state: ScaleState, now: datetime) -> datetime | None:
    """When the pending scale-up or scale-down becomes due if the load stays as it is
    (never before `now`), or None when none is pending."""
    due: list[datetime] = []
    if state.upscale_since is not None:
        due.append(state.upscale_since + timedelta(seconds=policy.upscale_delay_seconds))
    if state.downscale_since is not None:
        due.append(state.downscale_since + timedelta(seconds=policy.downscale_delay_seconds))
    if not due:
        return None
    return max(now, min(due))


def next_expiry(state: ScaleState, now: datetime) -> datetime | None:
    """When the oldest sample still counted leaves the window, lowering QPS with no new
    report; None when no sample counts. For a caller that is not told of idle intervals."""
    cutoff = now - timedelta(seconds=QPS_WINDOW_SECONDS)
    live = [at for at, _ in state.samples if at > cutoff]
    if not live:
        return None
    return max(now, min(live) + timedelta(seconds=QPS_WINDOW_SECONDS))


def split(policy: ScalePolicy, target: int, use_spot: bool, ready_spot: int) -> tuple[int, int]:
    """(spot, on-demand) replicas to run for `target` (plus `num_overprovision`), as
    SkyServe's FallbackRequestRateAutoscaler.

    Without spot every replica is on-demand. With spot, `base_ondemand_fallback_replicas`
    (at most the target) are always on-demand and the rest are spot; with
    `dynamic_ondemand_fallback`, one more on-demand replica for each wanted spot replica
    that is not READY (`ready_spot` counts the READY ones), which goes away once the spot
    one is READY. On-demand replicas never exceed the target: overprovisioning is spot.
    """
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    if ready_spot < 0:
        raise ValueError(f"ready_spot must be >= 0, got {ready_spot}")
    total = target + policy.num_overprovision
    if not use_spot:
        return 0, total
    base = min(policy.base_ondemand_fallback_replicas, target)
    spot = total - base
    on_demand = base
    if policy.dynamic_ondemand_fallback:
        # READY spot, not alive spot: a spot replica still provisioning may never come up
        # (no capacity), and until it serves an on-demand one does.
        on_demand += max(0, spot - ready_spot)
    return spot, min(on_demand, target)


def _clamp(policy: ScalePolicy, n: int) -> int:
    return max(policy.min_replicas, min(policy.upper, n))


def _elapsed(since: datetime, now: datetime, seconds: float) -> bool:
    # As a timedelta, rounded as in next_check: a timer set for the due time must find
    # the delay over.
    return now - since >= timedelta(seconds=seconds)


def _settled(state: ScaleState, target: int) -> ScaleState:
    return state.model_copy(
        update={"target": target, "upscale_since": None, "downscale_since": None}
    )
