"""The closed set of errors that cross the activity boundary, as data.

Workflows branch on `ApplicationError.type`, never on message text. Errors the workflow
must decide about (next region, give up) are non-retryable; transient ones are retried by
the activity's retry policy.
"""

from __future__ import annotations

from enum import StrEnum

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


# Unreachable is transient (a node rebooting, a dropped connection): retried by policy.
_NON_RETRYABLE = {
    ErrorKind.NO_CAPACITY,
    ErrorKind.QUOTA,
    ErrorKind.CREDENTIALS,
    ErrorKind.INVALID_SPEC,
    ErrorKind.PREEMPTED,
    ErrorKind.HOST_KEY,
    ErrorKind.NODE_SETUP,
}


def provider_error(
    kind: ErrorKind, message: str, *, non_retryable: bool | None = None
) -> ApplicationError:
    """The error for kind; non_retryable overrides the kind's default (a node unreachable
    for longer than a job can wait is final, though unreachable is usually transient)."""
    final = kind in _NON_RETRYABLE if non_retryable is None else non_retryable
    return ApplicationError(message, type=kind.value, non_retryable=final)


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
