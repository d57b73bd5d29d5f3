"""The closed set of errors that cross the activity boundary, as data.

Workflows branch on `ApplicationError.type`, never on message text. Errors the workflow
must decide about (next placement, give up) are non-retryable; transient ones are
retried by the activity's retry policy. Where an error happened (infra, region, zone,
instance type) and which input field it is about travel as the error's details, so a
failover table or an exit-2 message is built from data, not parsed from words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from temporalio.exceptions import ApplicationError


class ErrorKind(StrEnum):
    NO_CAPACITY = "NoCapacity"
    QUOTA = "Quota"
    CREDENTIALS = "Credentials"
    INVALID_SPEC = "InvalidSpec"
    PREEMPTED = "Preempted"
    UNREACHABLE = "Unreachable"
    # The host answered with a key other than the one recorded for it: never retried.
    HOST_KEY = "HostKey"
    # A node lacks a tool skyloom needs (rsync) and it could not be installed.
    NODE_SETUP = "NodeSetup"
    # The provider cannot do what was asked (stop on an infra without stop, ...).
    NOT_SUPPORTED = "NotSupported"


# Unreachable is transient (a node rebooting, a dropped connection): retried by policy.
_NON_RETRYABLE = {
    ErrorKind.NO_CAPACITY,
    ErrorKind.QUOTA,
    ErrorKind.CREDENTIALS,
    ErrorKind.INVALID_SPEC,
    ErrorKind.PREEMPTED,
    ErrorKind.HOST_KEY,
    ErrorKind.NODE_SETUP,
    ErrorKind.NOT_SUPPORTED,
}


@dataclass(frozen=True)
class Where:
    """Which place and which input an error is about (all optional)."""

    infra: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    # Dotted input field, e.g. `resources.infra`, `num_nodes`.
    field: str | None = None


def provider_error(
    kind: ErrorKind, message: str, *, non_retryable: bool | None = None, where: Where | None = None
) -> ApplicationError:
    """The error for kind; non_retryable overrides the kind's default (a node unreachable
    for longer than a job can wait is final, though unreachable is usually transient)."""
    final = kind in _NON_RETRYABLE if non_retryable is None else non_retryable
    details = [{k: v for k, v in asdict(where).items() if v is not None}] if where else []
    return ApplicationError(message, *details, type=kind.value, non_retryable=final)


def application_error(err: BaseException) -> ApplicationError | None:
    """The ApplicationError behind an activity failure as the workflow sees it (an
    ActivityError wraps it in its cause chain)."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    return cause


def kind_of(err: BaseException) -> ErrorKind | None:
    """The ErrorKind behind an activity failure as the workflow sees it."""
    cause = application_error(err)
    if cause is not None and cause.type in ErrorKind._value2member_map_:
        return ErrorKind(str(cause.type))
    return None


def where_of(err: BaseException) -> Where:
    """The Where carried by an error's details (empty when it carries none)."""
    cause = application_error(err)
    if cause is None or not cause.details:
        return Where()
    first: Any = cause.details[0]
    if not isinstance(first, dict):
        return Where()
    known = Where.__dataclass_fields__
    return Where(**{k: str(v) for k, v in first.items() if k in known and v is not None})


def message_of(err: BaseException) -> str:
    cause = application_error(err)
    return cause.message if cause is not None else str(err)
