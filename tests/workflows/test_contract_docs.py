"""docs/workflows.md is the contract for clients in other languages: every JSON example
in it must be accepted by the model it is marked with, and every name it documents must
be the one the code uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from skyloom.activities import models as activity_models
from skyloom.workflows import models
from skyloom.workflows.models import ClusterUpdate, ServiceUpdate, SessionUpdate

DOC = Path(__file__).parents[2] / "docs" / "workflows.md"
EXAMPLE = re.compile(r"<!-- model: (\w+) -->\s*```json\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    return EXAMPLE.findall(DOC.read_text())


def test_the_page_has_examples_of_every_input_a_client_sends():
    marked = {name for name, _ in examples()}
    assert {
        "ClusterInput",
        "SubmitJobInput",
        "ManagedJobInput",
        "ClusterDescription",
        "ServiceInput",
        "UpdateServiceInput",
    } <= marked


@pytest.mark.parametrize("name,body", examples(), ids=lambda v: v if len(v) < 30 else "")
def test_each_example_is_what_the_model_accepts(name: str, body: str):
    model = getattr(models, name, None) or getattr(activity_models, name)
    parsed = model.model_validate(json.loads(body))
    problems = getattr(parsed, "problems", None)
    assert problems is None or problems() is None


def test_the_documented_names_are_the_code_names():
    text = DOC.read_text()
    for name in (
        models.TASK_QUEUE,
        models.CLUSTER_WORKFLOW,
        models.MANAGED_JOB_WORKFLOW,
        models.WATCHER_WORKFLOW,
        models.SESSION_WORKFLOW,
        models.JOB_IDS_WORKFLOW_ID,
        models.DESCRIBE_QUERY,
        models.CANCEL_SIGNAL,
        models.CLOSE_SIGNAL,
        models.OBSERVE_SIGNAL,
        models.SERVICE_WORKFLOW,
        *ClusterUpdate,
        *ServiceUpdate,
        *SessionUpdate,
    ):
        assert f"`{name}`" in text, f"{name} is not documented in {DOC.name}"
    assert f"`{models.cluster_workflow_id('<name>')}`" in text
    assert f"`{models.managed_job_workflow_id('<id>')}`" in text
