"""Custom search attributes: how people and `skyloom status` find skyloom's workflows.

Each workflow sets its own from its input and state (`index`), so one started by any
Temporal client (another language, the `temporal` CLI) is listed like the rest; values a
client already set at start are not written again (no history event for nothing).
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

SA_KIND = SearchAttributeKey.for_keyword("SkyloomKind")
SA_NAME = SearchAttributeKey.for_keyword("SkyloomName")
SA_STATUS = SearchAttributeKey.for_keyword("SkyloomStatus")
SA_INFRA = SearchAttributeKey.for_keyword("SkyloomInfra")
SA_USER = SearchAttributeKey.for_keyword("SkyloomUser")

ALL = (SA_KIND, SA_NAME, SA_STATUS, SA_INFRA, SA_USER)

# The error type of a workflow that refused its input (non-retryable: it created nothing).
INVALID_INPUT = "InvalidInput"


def index(
    *, kind: str, name: str, status: str, infra: str, user: str, memo: dict[str, Any] | None = None
) -> None:
    """Upsert the search attributes (and memo entries) that differ from what is set."""
    current = workflow.info().typed_search_attributes
    wanted = (
        (SA_KIND, kind),
        (SA_NAME, name),
        (SA_STATUS, status),
        (SA_INFRA, infra),
        (SA_USER, user or "unknown"),
    )
    updates: list[SearchAttributeUpdate] = [
        key.value_set(value) for key, value in wanted if current.get(key) != value
    ]
    if updates:
        workflow.upsert_search_attributes(updates)
    if memo:
        changed = {k: v for k, v in memo.items() if workflow.memo_value(k, None) != v}
        if changed:
            workflow.upsert_memo(changed)


def invalid_input(workflow_type: str, problem: str) -> ApplicationError:
    return ApplicationError(
        f"{workflow_type}: invalid input: {problem}", type=INVALID_INPUT, non_retryable=True
    )
