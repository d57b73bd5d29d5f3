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


# Unreachable is transient (a node rebooting, a dropped connection): retried by policy.
_NON_RETRYABLE = {
    ErrorKind.NO_CAPACITY,
    ErrorKind.QUOTA,
    ErrorKind.CREDENTIALS,
    ErrorKind.INVALID_SPEC,
    ErrorKind.PREEMPTED,
}


def provider_error(kind: ErrorKind, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind.value, non_retryable=kind in _NON_RETRYABLE)


def kind_of(err: BaseException) -> ErrorKind | None:
    """The ErrorKind behind an activity failure as the workflow sees it."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type in ErrorKind._value2member_map_:
            return ErrorKind(str(cause.type))
        cause = cause.__cause__
    return None
